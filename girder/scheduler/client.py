"""The client node: submits top-level requests to a distributor and waits for their outcomes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

from girder.backends.base import NodeKind
from girder.errors import BackendFull, RequestError
from girder.functions import Request
from girder.scheduler.node import Node
from girder.serialization import Outcome


class Client(Node):
    """What `Grid` talks through. Each submission is a new job."""

    kind: ClassVar[NodeKind] = NodeKind.CLIENT
    _jobs = itertools.count()

    def refused(self, error: BackendFull) -> None:
        """The backend refuses writes: no outcome can reach this client, so every call it
        waits for fails now with a clear error instead of waiting in silence."""
        failed = self.waiters.fail_all(
            Outcome(error=RequestError("request", str(error), kind="backend"))
        )
        self.log.error("backend refuses writes; failing waiting calls", calls=failed)

    def _new_job(self) -> str:
        """A grid-unique job id: this node's (unique) id and a counter; no syscall."""
        return f"{self.id}:{next(self._jobs)}"

    async def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """Submit requests as one job, at the bottom of the pool's queue; wait for all."""
        batch = await self.request(
            requests, job=self._new_job(), into=self.settings.pool, on_top=False
        )
        await batch.future
        return batch.results()

    async def values(self, requests: Sequence[Request]) -> list[Any]:
        """Like `run`, but the values, or a `RequestError` with every failure as a cause."""
        batch = await self.request(
            requests, job=self._new_job(), into=self.settings.pool, on_top=False
        )
        await batch.future
        return self.raise_failures(lambda: "call_all", requests, batch)
