"""A `RedisBackend` connected for the length of a test (`connected`), for the fixtures that
run the suite or a test module with some settings; and what the suite's classes with
`spread_results` run instead of one of its tests (`MovedResultsPublishNoHitEvents`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from girder.backends.base import (
    Claimed,
    Completion,
    EventKind,
    NewRequest,
    NodeKind,
    StateBackend,
    Submitted,
)
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.testing.conformance import events_of, out, watch


@asynccontextmanager
async def connected(url: str, **settings: Any) -> AsyncIterator[RedisBackend]:
    """A `RedisBackend` of `url` with `Settings(**settings)`, connected, closed at the end."""
    backend = RedisBackend(url, settings=Settings(**settings))
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()


class MovedResultsPublishNoHitEvents:
    """For the suite's classes with `spread_results`."""

    async def test_events_follow_a_request_from_submit_to_finish(
        self, backend: StateBackend
    ) -> None:
        """As the suite's, but a submission answered from the key's own slot, once the result
        moved, publishes no event (docs/scaling.md)."""
        assert isinstance(backend, RedisBackend)
        assert backend._results is not None
        await watch(backend)
        await backend.join("w", NodeKind.WORKER, "d", 60.0)
        await backend.submit("c", [NewRequest("k", b"p", "fib")], into="w", on_top=True, job="j1")
        assert await backend.claim("w") == Claimed("k", b"p")
        await backend.complete_and_claim("w", [Completion("k", out("k"), True)], claim=0)
        await asyncio.wait_for(backend._results.settled(), 10)
        found = await backend.submit("c2", [NewRequest("k", b"p", "fib")], into="w", on_top=True)
        assert found == [Submitted("k", out("k"))]
        events = [e for e in await events_of(backend) if e.key == "k"]
        assert [(e.kind, e.node, e.detail) for e in events] == [
            (EventKind.SUBMITTED, "c", "new"),
            (EventKind.CLAIMED, "w", ""),
            (EventKind.FINISHED, "w", "cached"),
        ]
