"""The client node: submits top-level requests to a distributor and waits for their outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

from girder.backends.base import NodeKind, StateBackend
from girder.config import Settings
from girder.errors import BackendFull, RequestError, SerializationError
from girder.functions import Request
from girder.scheduler.node import Node
from girder.scheduler.waiters import Batch, Feed
from girder.serialization import Outcome


class Client(Node):
    """What `Grid` talks through. Each submission is a new job."""

    kind: ClassVar[NodeKind] = NodeKind.CLIENT
    _jobs = itertools.count()
    _cancelling: set[asyncio.Task[None]]
    _roots: dict[str, list[str]]

    def __init__(self, backend: StateBackend, settings: Settings, **options: Any) -> None:
        super().__init__(backend, settings, **options)
        self._cancelling = set()
        self._roots = {}
        """The keys each job under way submitted at the top level (what cancelling it lets go
        of): a client keeps its jobs' roots, the backend only each key's jobs."""

    def refused(self, error: BackendFull) -> None:
        """The backend refuses writes: no outcome can reach this client, so every call it
        waits for fails now with a clear error instead of waiting in silence."""
        failed = self.waiters.fail_all(
            Outcome(error=RequestError("request", str(error), kind="backend"))
        )
        self.log.error("backend refuses writes; failing waiting calls", calls=failed)

    def new_job(self) -> str:
        """A grid-unique job id: this node's (unique) id and a counter; no syscall."""
        return f"{self.id}:{next(self._jobs)}"

    async def run(self, requests: Sequence[Request], job: str | None = None) -> list[Outcome]:
        """Submit requests as one job, at the bottom of the pool's queue; wait for all."""
        batch = await self._wait(requests, job or self.new_job())
        return batch.results()

    async def values(
        self, requests: Sequence[Request], on_done: Callable[[int], None] | None = None
    ) -> list[Any]:
        """Like `run`, but the values, or a `RequestError` with every failure as a cause.
        `on_done(n)` hears of each `n` more requests that finished (for a progress bar)."""
        batch = await self._wait(requests, self.new_job(), on_done)
        return self.raise_failures(lambda: "call_all", requests, batch)

    async def _wait(
        self,
        requests: Sequence[Request],
        job: str,
        on_done: Callable[[int], None] | None = None,
    ) -> Batch:
        """Submit the job, wait for it and fetch its large values (see `settle`). If the
        waiting task is cancelled (`task.cancel()`, `asyncio.timeout`, a cancel scope), the
        job is cancelled on the grid too, in the background: the caller sees its
        `CancelledError` at once."""
        self._roots[job] = _keys(requests)
        try:
            batch = await self._submit_and_wait(requests, job, on_done)
            await self.settle(requests, batch, lambda lost: self._submit_and_wait(lost, job))
        except asyncio.CancelledError:
            self._cancel_soon(job)
            raise
        finally:
            self._roots.pop(job, None)
        return batch

    async def _submit_and_wait(
        self,
        requests: Sequence[Request],
        job: str,
        on_done: Callable[[int], None] | None = None,
    ) -> Batch:
        batch = await self.request(requests, job=job, into=self.settings.pool, on_top=False)
        if on_done is not None:
            on_done(len(requests) - batch.remaining)  # answered at once (the cache)
            batch.on_outcome = lambda: on_done(1)
        await batch.future
        return batch

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        """The answers of one request as one job, in order: the latest partial one first when
        it already runs, then each one as it is published, the final one last (raised when it
        is an error). Leaving the stream early cancels the job, as a cancelled call does."""
        job = self.new_job()
        finished = False
        self._roots[job] = [request.key]

        async def submit(feed: Feed) -> None:
            await self.request([request], job=job, into=self.settings.pool, on_top=False, feed=feed)

        try:
            async with contextlib.aclosing(self.answers(request, submit, Feed.wait)) as answers:
                async for outcome in answers:
                    finished = outcome.final
                    yield outcome.unwrap()
            finished = True
        finally:
            if not finished:
                self._cancel_soon(job)
            else:
                self._roots.pop(job, None)

    def _cancel_soon(self, job: str) -> None:
        roots = self._roots.pop(job, [])
        task = asyncio.get_running_loop().create_task(self._cancel_quietly(job, roots))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _cancel_quietly(self, job: str, roots: list[str]) -> None:
        try:
            await self._cancel(job, roots)
        except Exception as exc:  # the caller has gone; the grid notices nothing worse
            self.log.warning("cancelling a job failed", job=job, error=repr(exc))

    async def cancel(self, job: str) -> int:
        """Cancel `job` (of any client of the grid): every request that no other live job and
        no waiting request needs stops (see `StateBackend.cancel`). A job of this client is
        cancelled here (returns how many requests stopped); another client's is handed to that
        client, which knows its job's roots (returns 0: the count is that client's)."""
        owner = job.rpartition(":")[0]
        if owner != self.id:
            await self.backend.ask_to_cancel(owner, job)
            return 0
        return await self._cancel(job, self._roots.pop(job, []))

    async def _cancel(self, job: str, roots: list[str]) -> int:
        count = 0
        step_roots: list[str] = roots
        while True:
            step = await self.backend.cancel(self.id, job, roots=step_roots)
            step_roots = []
            count += len(step.cancelled)
            if not step.remaining:
                break
        self.log.info("job cancelled", job=job, requests=count)
        return count

    def cancel_notice(self, key: str, job: str) -> None:
        """A notice with no key is another client asking this one to cancel its job `job`."""
        if key:
            super().cancel_notice(key, job)
        elif job in self._roots:
            self._cancel_soon(job)

    async def stop(self) -> None:
        """Finish the cancellations under way, then stop like any node; calls still waiting
        fail (nothing will answer them any more)."""
        await asyncio.gather(*self._cancelling, return_exceptions=True)
        await super().stop()
        message = "the grid stopped before the request finished"
        self.waiters.fail_all(Outcome(error=RequestError("request", message, kind="stopped")))


def _keys(requests: Sequence[Request]) -> list[str]:
    """The keys of `requests` (one that cannot be encoded has none: it fails on its own)."""
    keys = []
    for request in requests:
        try:
            keys.append(request.key)
        except SerializationError:
            continue
    return keys
