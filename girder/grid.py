"""`Grid`: the client API. `Grid.local` runs a whole grid in this process; `Grid.connect` joins one.

```python
async with girder.Grid.local(workers=4) as grid:
    await grid.call(fib, 90)
```
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from girder.backends import open_backend
from girder.backends.base import StateBackend
from girder.config import Settings, load_settings
from girder.errors import RequestError
from girder.functions import Request, as_request
from girder.log import configure
from girder.scheduler import Client, Distributor, Worker

if TYPE_CHECKING:
    from girder.dashboard import Dashboard


class Handle:
    """A submitted request. Await it for the value (or the `RequestError`).

    `job` is the id of the job it started; `cancel()` cancels that job (awaiting the handle then
    raises `asyncio.CancelledError`), as `await grid.cancel(handle.job)` does from any client."""

    __slots__ = ("_task", "job", "request")

    def __init__(self, request: Request, task: asyncio.Task[Any], job: str) -> None:
        self.request = request
        self.job = job
        self._task = task

    def cancel(self) -> bool:
        """Cancel the job: what no other job needs stops. False if it had already finished."""
        return self._task.cancel()

    @property
    def key(self) -> str:
        return self.request.key

    def done(self) -> bool:
        return self._task.done()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<Handle {self.request.readable()} {state}>"


class Grid:
    """A client of a grid; with `local`, also the grid's distributor and workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        local_workers: int = 0,
        backend: StateBackend | None = None,
    ) -> None:
        self.settings = settings
        self.local_workers = local_workers
        self.backend = backend or open_backend(settings.backend, settings=settings)
        self.client = Client(self.backend, settings)
        self.distributor: Distributor | None = None
        self.workers: list[Worker] = []
        self._handles: set[asyncio.Task[Any]] = set()
        self.dashboard_port: int | None = None
        """With a port, `start` serves the dashboard on loopback there (0: any free port)."""
        self.dashboard: Dashboard | None = None
        """The running `girder.dashboard.Dashboard`, if any."""

    @classmethod
    def local(
        cls,
        workers: int | None = None,
        backend: str | None = None,
        *,
        dashboard: bool | int = False,
        **options: Any,
    ) -> Grid:
        """A grid in this process: a distributor and `workers` workers on this event loop.

        Use as `async with Grid.local(workers=4) as grid:`. Works inside a running loop (Jupyter).
        With `dashboard=True` (port 8787) or a port number, it also serves the live dashboard on
        127.0.0.1 and prints its URL (needs the `dashboard` extra). Further keyword options are
        `Settings` fields (e.g. `steal_period=0.05`).
        """
        settings = load_settings(workers=workers, backend=backend, **options)
        grid = cls(settings, local_workers=settings.workers)
        if dashboard is not False:
            grid.dashboard_port = 8787 if dashboard is True else int(dashboard)
        return grid

    @classmethod
    def connect(cls, url: str | None = None, pool: str | None = None, **options: Any) -> Grid:
        """A client of a grid whose distributor and workers run elsewhere."""
        settings = load_settings(backend=url, pool=pool, **options)
        return cls(settings)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect to the backend and start the local nodes (if any) and the client."""
        configure(self.settings.log_level)
        await self.backend.connect()
        if self.local_workers:
            self.distributor = Distributor(self.backend, self.settings, parent=self.settings.parent)
            await self.distributor.start()
            for index in range(self.local_workers):
                worker = Worker(
                    self.backend, self.settings, node_id=f"{self.settings.pool}-w{index + 1}"
                )
                await worker.start()
                self.workers.append(worker)
        await self.client.start()
        if self.dashboard_port is not None:
            from girder.dashboard import Dashboard  # noqa: PLC0415 -- needs the `dashboard` extra

            self.dashboard = Dashboard(self.backend, port=self.dashboard_port)
            print(f"girder dashboard: {await self.dashboard.start()}", flush=True)

    async def stop(self) -> None:
        """Stop the client and local nodes, and close the backend connection."""
        if self.dashboard is not None:
            await self.dashboard.stop()
            self.dashboard = None
        for task in self._handles:
            task.cancel()
        await asyncio.gather(*self._handles, return_exceptions=True)
        await self.client.stop()
        for worker in self.workers:
            await worker.stop()
        if self.distributor is not None:
            await self.distributor.stop()
        self.workers.clear()
        self.distributor = None
        await self.backend.close()

    async def call(
        self, fn: Any, /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Run one request; return its value or raise `RequestError`. `fn` may be a `Request`
        (alone), e.g. one routed to another pool.

        With `timeout`, a request that has no answer after that many seconds fails with a
        `RequestError` of kind "timeout", and its job is cancelled (what nothing else needs
        stops). `timeout` is girder's: pass a function's own `timeout` argument through
        `grid.call(girder.Request(fn, timeout=...))`."""
        request = _one_request(fn, args, kwargs)
        if timeout is None:
            return await self._call_one(request)
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await self._call_one(request)
        except TimeoutError:
            if not scope.expired():
                raise
        raise RequestError(
            request.readable(), f"no answer within {timeout:g} s (timeout=...)", kind="timeout"
        )

    async def call_all(self, requests: Iterable[Any]) -> list[Any]:
        """Run many requests at once; their values in order, or `RequestError` with every
        failure as a cause."""
        return await self.client.values([as_request(item) for item in requests])

    def stream(self, fn: Any, /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """The answers of one request, in order: `async for answer in grid.stream(fn, *args)`.

        An async-generator grid function yields several answers (the last one is its value,
        and only that one is cached); any other function has one, its value. Joining a request
        that already runs starts from its latest answer; a cached one yields its value alone.
        A failure raises `RequestError`; leaving the loop early cancels the job.
        """
        return self.client.stream(Request(fn, *args, **kwargs))

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Handle:
        """Start one request and return a handle at once; await the handle for the value. `fn`
        may be a `Request` (alone), as in `call`."""
        request = _one_request(fn, args, kwargs)
        job = self.client.new_job()
        task = asyncio.ensure_future(self._call_one(request, job))
        self._handles.add(task)
        task.add_done_callback(self._handles.discard)
        return Handle(request, task, job)

    async def cancel(self, job: str) -> int:
        """Cancel the job `job` (a `Handle.job`, from this client or any other of the grid):
        every request of it that no other live job and no waiting request needs stops; whoever
        else waited for those gets `girder.Cancelled`. Returns how many requests stopped."""
        return await self.client.cancel(job)

    async def _call_one(self, request: Request, job: str | None = None) -> Any:
        (outcome,) = await self.client.run([request], job)
        return outcome.unwrap()


def _one_request(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Request:
    """The request of `call(fn, *args, **kwargs)`: `fn` itself if it is a `Request`; else every
    keyword argument is the function's (`pool` too: only `Request` reserves it)."""
    if isinstance(fn, Request):
        if args or kwargs:
            raise TypeError("a Request takes its arguments itself, not call(request, ...)")
        return fn
    request = Request(fn, *args)
    request.kwargs = kwargs
    return request
