"""The client node: submits top-level requests to a distributor and waits for their outcomes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from girder.backends.base import NodeKind, StateBackend
from girder.config import Settings
from girder.errors import BackendFull, RequestError
from girder.functions import Request
from girder.scheduler.node import Node
from girder.scheduler.waiters import Batch, Feed
from girder.serialization import Outcome


class Client(Node):
    """What `Grid` talks through. Each submission is a new job."""

    kind: ClassVar[NodeKind] = NodeKind.CLIENT
    _jobs = itertools.count()
    _cancelling: set[asyncio.Task[None]]

    def __init__(self, backend: StateBackend, settings: Settings, **options: Any) -> None:
        super().__init__(backend, settings, **options)
        self._cancelling = set()

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

    async def values(self, requests: Sequence[Request]) -> list[Any]:
        """Like `run`, but the values, or a `RequestError` with every failure as a cause."""
        batch = await self._wait(requests, self.new_job())
        return self.raise_failures(lambda: "call_all", requests, batch)

    async def _wait(self, requests: Sequence[Request], job: str) -> Batch:
        """Submit the job and wait for it. If the waiting task is cancelled (`task.cancel()`,
        `asyncio.timeout`, a cancel scope), the job is cancelled on the grid too, in the
        background: the caller sees its `CancelledError` at once."""
        batch = await self.request(requests, job=job, into=self.settings.pool, on_top=False)
        try:
            await batch.future
        except asyncio.CancelledError:
            self._cancel_soon(job)
            raise
        return batch

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        """The answers of one request as one job, in order: the latest partial one first when
        it already runs, then each one as it is published, the final one last (raised when it
        is an error). Leaving the stream early cancels the job, as a cancelled call does."""
        assert self._loop is not None, "node not started"
        job = self.new_job()
        feed = Feed(self._loop)
        finished = False
        try:
            await self.request([request], job=job, into=self.settings.pool, on_top=False, feed=feed)
            while not finished:
                await feed.wait()
                outcome = feed.take()
                finished = outcome is None or outcome.final
                if outcome is not None:
                    yield outcome.unwrap()
        finally:
            if not finished:
                self._cancel_soon(job)

    def _cancel_soon(self, job: str) -> None:
        task = asyncio.get_running_loop().create_task(self._cancel_quietly(job))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _cancel_quietly(self, job: str) -> None:
        try:
            await self.cancel(job)
        except Exception as exc:  # the caller has gone; the grid notices nothing worse
            self.log.warning("cancelling a job failed", job=job, error=repr(exc))

    async def cancel(self, job: str) -> int:
        """Cancel `job` (of any client of the grid): every request that no other live job and
        no waiting request needs stops (see `StateBackend.cancel`). Returns how many."""
        count = 0
        while True:
            step = await self.backend.cancel(self.id, job)
            count += len(step.cancelled)
            if not step.remaining:
                break
        self.log.info("job cancelled", job=job, requests=count)
        return count

    async def stop(self) -> None:
        """Finish the cancellations under way, then stop like any node."""
        await asyncio.gather(*self._cancelling, return_exceptions=True)
        await super().stop()
