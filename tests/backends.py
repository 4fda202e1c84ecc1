"""A `RedisBackend` connected for the length of a test (`connected`), for the fixtures that
run the suite or a test module with some settings; the reply of every distinct command lost
once (`lose_every_reply_once`); and what the suite's classes with `spread_results` run instead
of one of its tests (`MovedResultsPublishNoHitEvents`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from girder.backends import redis as redis_backend
from girder.backends import resp
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


def lose_every_reply_once(monkeypatch: Any) -> set[str]:
    """From now on, lose the reply of every distinct command once, after the server ran it:
    the client sends it again, so every script runs twice. Waits for a wake-up are spared (a
    lost wake-up only costs a wake-up). The commands whose reply was lost gather in the set
    returned."""
    original = resp.Connection.pipeline
    seen: set[str] = set()

    async def losing_once(self: resp.Connection, commands: Sequence[resp.Command]) -> list[Any]:
        replies = await original(self, commands)
        blocking = any(command[0] in ("BLPOP", "BLMOVE", "LPOP") for command in commands)
        text = repr(commands)
        if not blocking and text not in seen:
            seen.add(text)
            raise resp.ReplyLost("reply lost after the server ran the command")
        return replies

    monkeypatch.setattr(resp.Connection, "pipeline", losing_once)
    # A lost reply is retried after the outage backoff's first step: cut it, so that the
    # hundreds of lost replies of a suite cost what their round trips do.
    monkeypatch.setattr(redis_backend, "_RETRY_FIRST", 0.002)
    return seen


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
