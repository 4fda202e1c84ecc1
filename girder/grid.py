"""`Grid`: the client API. `Grid.local` runs a whole grid in this process; `Grid.connect` joins one.

```python
async with girder.Grid.local(workers=4) as grid:
    await grid.call(fib, 90)
```
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Self, TypeVar, overload

from girder import chunking
from girder.backends import open_backend
from girder.backends.base import StateBackend
from girder.config import Settings, load_settings
from girder.errors import ConfigurationError, GridStopped, RequestError
from girder.functions import Request, as_request, one_request
from girder.processes import LocalProcesses
from girder.progress import Progress
from girder.scheduler import Client, Distributor, Worker
from girder.scheduler.children import ChildPool, pool_size
from girder.topology import Topology
from girder.topology import runner as topology_runner

P = ParamSpec("P")
R = TypeVar("R")

if TYPE_CHECKING:
    from girder.dashboard import Dashboard


class Handle(Generic[R]):
    """A submitted request. Await it for the value (or the `RequestError`): a `Handle[R]`
    gives an `R`.

    `job` is the id of the job it started; `cancel()` cancels that job (awaiting the handle then
    raises `asyncio.CancelledError`), as `await grid.cancel(handle.job)` does from any client."""

    __slots__ = ("_task", "job", "request")

    def __init__(self, request: Request, task: asyncio.Task[R], job: str) -> None:
        self.request = request
        self.job = job
        self._task = task

    def cancel(self) -> bool:
        """Cancel the job: what no other job needs stops. False if it had already finished."""
        return self._task.cancel()

    def add_done_callback(self, callback: Callable[[Handle[R]], object]) -> None:
        """Call `callback(handle)` once the request has finished (at once if it has)."""
        self._task.add_done_callback(lambda _: callback(self))

    @property
    def key(self) -> str:
        return self.request.key

    def done(self) -> bool:
        return self._task.done()

    def __await__(self) -> Generator[Any, None, R]:
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
        processes: LocalProcesses | None = None,
    ) -> None:
        self.settings = settings
        self.local_workers = local_workers
        self.processes = processes
        """The worker processes of `Grid.local(processes=N)` (started and stopped with it)."""
        self.backend = backend or open_backend(settings.backend, settings=settings)
        self.client = Client(self.backend, settings)
        self.distributor: Distributor | None = None
        self.workers: list[Worker] = []
        self.children: ChildPool | None = None
        """The child processes of the local workers' slow sync functions
        (`sync_offload="process"`), started as they are needed and stopped with the grid."""
        self._handles: set[asyncio.Task[Any]] = set()
        self.dashboard_port: int | None = None
        """With a port, `start` serves the dashboard on loopback there (0: any free port)."""
        self.dashboard: Dashboard | None = None
        """The running `girder.dashboard.Dashboard`, if any."""
        self._stopped = False

    @classmethod
    def local(
        cls,
        workers: int | None = None,
        backend: str | None = None,
        *,
        processes: int | None = None,
        dashboard: bool | int = False,
        **options: Any,
    ) -> Grid:
        """A grid in this process: a distributor and `workers` workers on this event loop.

        Use as `async with Grid.local(workers=4) as grid:`. Works inside a running loop (Jupyter).
        Further keyword options are `Settings` fields (e.g. `steal_period=0.05`).

        With `processes=N`, the grid runs on all cores of this machine instead: a private
        redis-server, a distributor and N worker processes, started with the grid and stopped
        with it (see `girder.processes`); this process is only a client.

        With `dashboard=True` (port 8787) or a port number, it also serves the live dashboard on
        127.0.0.1 and prints its URL (needs the `dashboard` extra).
        """
        grid = cls._local(workers, backend, processes, options)
        if dashboard is not False:
            grid.dashboard_port = 8787 if dashboard is True else int(dashboard)
        return grid

    @classmethod
    def _local(
        cls,
        workers: int | None,
        backend: str | None,
        processes: int | None,
        options: dict[str, Any],
    ) -> Grid:
        if processes is None:
            settings = load_settings(workers=workers, backend=backend, **options)
            return cls(settings, local_workers=settings.workers)
        if workers is not None or backend is not None:
            raise ConfigurationError(
                "Grid.local(processes=N) starts N worker processes on a private redis-server: "
                "pass neither workers= nor backend= with it"
            )
        load_settings(workers=processes, **options)  # bad options fail here, not in a child
        machine = LocalProcesses(processes, options)
        settings = load_settings(**{**options, "backend": machine.url, "secret": machine.secret})
        return cls(settings, processes=machine)

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
        if self.processes is not None:
            await self._start_processes()
        else:
            await self._start_here()
        if self.dashboard_port is not None:
            try:
                await self._start_dashboard(self.dashboard_port)
            except BaseException:
                await self.stop()
                raise

    async def _start_here(self) -> None:
        """Connect to the backend, start the local nodes (if any) and the client."""
        await self.backend.connect()
        if self.local_workers:
            self.distributor = Distributor(self.backend, self.settings, parent=self.settings.parent)
            await self.distributor.start()
            if self.settings.sync_offload == "process":
                batons = self.local_workers * self.settings.concurrency
                self.children = ChildPool(pool_size(batons))
            for index in range(self.local_workers):
                worker = Worker(
                    self.backend,
                    self.settings,
                    node_id=f"{self.settings.pool}-w{index + 1}",
                    children=self.children,
                )
                await worker.start()
                self.workers.append(worker)
        await self.client.start()

    async def _start_dashboard(self, port: int) -> None:
        from girder.dashboard import Dashboard  # noqa: PLC0415 -- needs the `dashboard` extra

        self.dashboard = Dashboard(self.backend, port=port)
        print(f"girder dashboard: {await self.dashboard.start()}", flush=True)

    async def _start_processes(self) -> None:
        """Start the private grid's processes, then connect to it as a client."""
        assert self.processes is not None
        await self.processes.start()
        try:
            await self.backend.connect()
            await self.client.start()
            await self.processes.wait_for_workers(self.backend)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the client and local nodes, and close the backend connection."""
        self._stopped = True
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
        if self.children is not None:
            await self.children.close()
            self.children = None
        await self.backend.close()
        if self.processes is not None:
            await self.processes.stop()

    # The overloads type `call` and `submit` from the function: its arguments are checked and
    # the value is what it returns (awaited for `async def`; a stream's last answer). With
    # girder's `timeout`, the arguments are not checked (typing cannot add a keyword to
    # ParamSpec arguments) but the value still is; mypy thinks no call reaches those overloads,
    # but a `timeout` the function does not take fails the first ones and reaches them.
    @overload
    async def call(
        self, fn: Callable[P, AsyncIterator[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    async def call(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    async def call(  # type: ignore[overload-cannot-match]
        self, fn: Callable[..., AsyncIterator[R]], /, *args: Any, timeout: float, **kwargs: Any
    ) -> R: ...
    @overload
    async def call(  # type: ignore[overload-cannot-match]
        self, fn: Callable[..., Awaitable[R]], /, *args: Any, timeout: float, **kwargs: Any
    ) -> R: ...
    @overload
    async def call(  # type: ignore[overload-cannot-match]
        self, fn: Callable[..., R], /, *args: Any, timeout: float, **kwargs: Any
    ) -> R: ...
    @overload
    async def call(self, fn: Request, /, *, timeout: float | None = None) -> Any: ...

    async def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run one request; return its value or raise `RequestError`. `fn` may be a `Request`
        (alone), e.g. one routed to another pool.

        With `timeout`, a request that has no answer after that many seconds fails with a
        `RequestError` of kind "timeout", and its job is cancelled (what nothing else needs
        stops). `timeout` is girder's: pass a function's own `timeout` argument through
        `grid.call(girder.Request(fn, timeout=...))`."""
        self._require_running()
        timeout: float | None = kwargs.pop("timeout", None)
        request = one_request(fn, args, kwargs)
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

    async def call_all(self, requests: Iterable[Any], *, progress: bool = False) -> list[Any]:
        """Run many requests at once; their values in order, or `RequestError` with every
        failure as a cause. With `progress`, a progress bar counts them as they finish."""
        self._require_running()
        batch = [as_request(item) for item in requests]
        with Progress(len(batch), description="call_all", enabled=progress) as bar:
            return await self.client.values(batch, bar.advance if progress else None)

    async def as_completed(
        self, requests: Iterable[Any], *, progress: bool = False
    ) -> AsyncGenerator[Handle[Any], None]:
        """The handles of `requests` as they finish, quickest first:
        `async for handle in grid.as_completed(requests): value = await handle`.

        Each request (a `Request`, a tuple `(fn, *args)`, or a `Handle` from `submit`) runs as
        its own job; a finished handle gives its value or raises its `RequestError` when
        awaited. With `progress`, a progress bar counts them. Leaving the loop early cancels
        the jobs this call started and that have not finished."""
        handles: list[Handle[Any]] = []
        ours: list[Handle[Any]] = []  # submitted here: cancelled when the loop is left early
        for item in requests:
            if isinstance(item, Handle):
                handles.append(item)
            else:
                ours.append(self.submit(as_request(item)))
                handles.append(ours[-1])
        finished: asyncio.Queue[Handle[Any]] = asyncio.Queue()
        for handle in handles:
            handle.add_done_callback(finished.put_nowait)
        try:
            with Progress(len(handles), description="as_completed", enabled=progress) as bar:
                for _ in handles:
                    handle = await finished.get()
                    bar.advance()
                    yield handle
        finally:
            for handle in ours:
                handle.cancel()

    def stream(self, fn: Any, /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """The answers of one request, in order: `async for answer in grid.stream(fn, *args)`.

        An async-generator grid function yields several answers (the last one is its value,
        and only that one is cached); any other function has one, its value. Joining a request
        that already runs starts from its latest answer; a cached one yields its value alone.
        A failure raises `RequestError`; leaving the loop early cancels the job.
        """
        self._require_running()
        return self.client.stream(Request(fn, *args, **kwargs))

    async def map_reduce(
        self,
        mapper: Any,
        reducer: Any,
        source: Any,
        start: int,
        stop: int,
        *,
        blocks: Sequence[int] = chunking.DEFAULT_BLOCKS,
        workers: int | None = None,
    ) -> Any:
        """`girder.map_reduce` from this client: `reducer` of `mapper(source, lo, hi)` over the
        block-aligned pieces of `[start, stop)`, computing only the blocks not cached yet (see
        the chunking page of the docs)."""
        request = chunking.span_request(
            mapper, reducer, source, start, stop, blocks=blocks, workers=workers
        )
        return await self._call_one(request)

    def map_reduce_stream(
        self,
        mapper: Any,
        reducer: Any,
        source: Any,
        start: int,
        stop: int,
        *,
        blocks: Sequence[int] = chunking.DEFAULT_BLOCKS,
        workers: int | None = None,
    ) -> AsyncIterator[chunking.Answer]:
        """`girder.map_reduce_stream` from this client: a coarse `Answer` from the blocks
        already cached (when they cover part of the range), then the exact one."""
        request = chunking.span_request(
            mapper, reducer, source, start, stop, blocks=blocks, workers=workers, answers=True
        )
        return self.client.stream(request)

    @overload
    def submit(
        self, fn: Callable[P, AsyncIterator[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Handle[R]: ...
    @overload
    def submit(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Handle[R]: ...
    @overload
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Handle[R]: ...
    @overload
    def submit(self, fn: Request, /) -> Handle[Any]: ...

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Handle[Any]:
        """Start one request and return a handle at once; await the handle for the value. `fn`
        may be a `Request` (alone), as in `call`."""
        self._require_running()
        request = one_request(fn, args, kwargs)
        job = self.client.new_job()
        task = asyncio.ensure_future(self._call_one(request, job))
        self._handles.add(task)
        task.add_done_callback(self._handles.discard)
        return Handle(request, task, job)

    def run(
        self,
        topology: Topology,
        *,
        debug: Mapping[str, topology_runner.Callback] | None = None,
        stop_on_error: bool = False,
    ) -> AsyncIterator[tuple[int | None, Any]]:
        """Run a topology: `async for seq, value in grid.run(topology)` gives the outputs of
        its sinks as they come. Its worker stages run as requests on the grid's workers.

        A stage that fails for a seq id gives `(seq, StageError)` in place of an output and the
        topology goes on; with `stop_on_error`, the loop raises that `StageError` instead.
        `debug={"stage": callback}` calls `callback(stage, seq, item)` here for every output of
        the stage and every line its function prints (a `girder.Printed`). Leaving the loop
        early stops the run. See docs/topologies.md.
        """
        return topology_runner.run(self, topology, debug=debug, stop_on_error=stop_on_error)

    async def cancel(self, job: str) -> int:
        """Cancel the job `job` (a `Handle.job`, from this client or any other of the grid):
        every request of it that no other live job and no waiting request needs stops; whoever
        else waited for those gets `girder.Cancelled`. Returns how many requests stopped."""
        self._require_running()
        return await self.client.cancel(job)

    def _require_running(self) -> None:
        """Raise `GridStopped` at once unless the grid runs (a call would wait forever)."""
        if self.client.running:
            return
        when = "has stopped" if self._stopped else "has not started"
        raise GridStopped(
            f"the grid {when}: call it inside `async with girder.Grid.local(...) as grid:` "
            "(or `Grid.connect`), or between `await grid.start()` and `await grid.stop()`"
        )

    async def _call_one(self, request: Request, job: str | None = None) -> Any:
        (outcome,) = await self.client.run([request], job)
        return outcome.unwrap()
