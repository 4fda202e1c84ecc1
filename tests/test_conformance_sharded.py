"""The backend conformance suite on `ShardedRedisBackend` (`Settings.layout = "sharded"`): each
request's record in the slot of its own key. On one server, and on a real Redis Cluster (3
primaries, 3 replicas) where the records spread over every primary."""

from __future__ import annotations

import os
import types
from collections.abc import AsyncIterator

import pytest
from backends import lose_every_reply_once

from girder.backends import open_backend
from girder.backends import sharded as sharded_module
from girder.backends.base import Claimed, NewRequest, NodeKind, RequestState, StateBackend
from girder.backends.redis import RedisBackend
from girder.backends.sharded import ShardedRedisBackend
from girder.config import Settings
from girder.errors import ConfigurationError
from girder.testing.conformance import BackendConformance

pytestmark = [pytest.mark.redis]

PREFIX = "sharded"
EVERY_CLASS_ENV = "GIRDER_SHARDED_EVERY_CLASS"


async def _connected(url: str) -> ShardedRedisBackend:
    backend = open_backend(url, settings=Settings(key_prefix=PREFIX, layout="sharded"))
    assert isinstance(backend, ShardedRedisBackend)
    await backend.connect()
    return backend


class TestShardedBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, redis_url: str) -> AsyncIterator[StateBackend]:
        backend = await _connected(redis_url)
        yield backend
        await backend.close()


@pytest.mark.slow
class TestShardedClusterBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, redis_cluster_url: str) -> AsyncIterator[StateBackend]:
        backend = await _connected(redis_cluster_url)
        yield backend
        await backend.close()


class TestShardedBackendLosingEveryReplyOnce(BackendConformance):
    """The suite again, the reply of every distinct command lost once after the server ran it
    (see the same class in test_conformance_redis.py): every step of every operation, in the
    grid's slot or in a record's, runs twice, and every rule must still hold."""

    @pytest.fixture
    async def backend(
        self, redis_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[StateBackend]:
        seen = lose_every_reply_once(monkeypatch)
        backend = await _connected(redis_url)
        yield backend
        await backend.close()
        assert seen, "no reply was lost"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(EVERY_CLASS_ENV) != "1",
    reason=f"on demand ({EVERY_CLASS_ENV}=1): the one-server class loses the same replies, and "
    "the cluster's redirections are covered by the class above; this one costs CI half a minute",
)
class TestShardedClusterBackendLosingEveryReplyOnce(BackendConformance):
    @pytest.fixture
    async def backend(
        self, redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[StateBackend]:
        seen = lose_every_reply_once(monkeypatch)
        backend = await _connected(redis_cluster_url)
        yield backend
        await backend.close()
        assert seen, "no reply was lost"


# -- what only the sharded layout does ----------------------------------------------------------


@pytest.fixture
async def sharded(redis_url: str) -> AsyncIterator[ShardedRedisBackend]:
    backend = await _connected(redis_url)
    yield backend
    await backend.flush()
    await backend.close()


async def lose_running_entry(backend: ShardedRedisBackend, node: str, key: str) -> None:
    """What a failover of the grid's primary that lost a claim's write leaves: the record, on
    another primary, still runs under `node`, but node's running set no longer names the key."""
    await backend._execute("test", "SREM", backend._keys.running(node), key)


async def test_a_record_whose_owner_lost_its_running_entry_is_freed_by_a_submission(
    sharded: ShardedRedisBackend,
) -> None:
    """A registered owner is not enough: only its running set says it will complete a key."""
    await sharded.join("w", NodeKind.WORKER, None, 60)
    await sharded.submit("c", [NewRequest("k", b"p")], into="w", on_top=True)
    assert await sharded.claim("w") == Claimed("k", b"p")
    await lose_running_entry(sharded, "w", "k")
    [again] = await sharded.submit("c2", [NewRequest("k", b"p")], into="w2", on_top=True)
    assert not again.shared  # freed: pending again, and pushed
    assert await sharded.claim("w2") == Claimed("k", b"p")


async def test_reconcile_hands_back_a_claim_the_running_set_lost(
    sharded: ShardedRedisBackend,
) -> None:
    """The process remembers its nodes' claims: a reconcile gives back one that the grid's
    running set no longer names."""
    await sharded.join("w", NodeKind.WORKER, "d", 60)
    await sharded.submit("c", [NewRequest("k", b"p")], into="w", on_top=True)
    assert await sharded.claim("w") == Claimed("k", b"p")
    await lose_running_entry(sharded, "w", "k")
    assert await sharded.reconcile("w", keep=[]) == 1
    assert await sharded.state("k") == RequestState.PENDING
    assert await sharded.lengths(["d"]) == [1]


async def test_a_distributor_sweeps_away_the_orphans_a_failover_left(
    sharded: ShardedRedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a heartbeat saw writes lost, a record pending on no list (its push lost) and one
    running under an owner whose running set lost it (its claim lost) are deleted once two
    rounds a lease apart found them unchanged, as the one-slot layout's failover would have lost
    them; one queued, one claimed, and one submitted again in between stay. A node that still
    waits for a deleted key submits it again, and it is made anew. A forged work list harms
    nothing."""
    now = [1000.0]
    monkeypatch.setattr(sharded_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    await sharded.join("d", NodeKind.DISTRIBUTOR, None, 60)
    await sharded.join("w", NodeKind.WORKER, "d", 60)
    keys = ["claimed", "lost-push", "lost-claim", "pushed-again", "queued"]
    await sharded.submit("c", [NewRequest(key, b"p") for key in keys], into="w", on_top=False)
    assert await sharded.claim("w") == Claimed("claimed", b"p")
    for key in ("lost-push", "lost-claim", "pushed-again"):
        await sharded._execute("test", "LREM", sharded._keys.work("w"), 0, key)
    await sharded._records.claim("w", ["lost-claim"])  # its grid step lost: running, unowned
    await sharded.join("forged", NodeKind.WORKER, "d", 60)  # garbage where its list goes
    await sharded._execute("test", "SET", sharded._keys.work("forged"), "not a list")
    await sharded.heartbeat("d", 60)
    sharded._servers_seen["d"] = frozenset()  # as if every primary were new: writes lost
    assert (await sharded.heartbeat("d", 60)).lost_writes

    async def states_after_a_round() -> dict[str, RequestState]:
        now[0] += 60
        await sharded.reap("d", 3)
        assert sharded._sweeping is not None
        await sharded._sweeping
        return {key: await sharded.state(key) for key in keys}

    before = await states_after_a_round()  # the first round only suspects
    assert RequestState.UNKNOWN not in before.values()
    await sharded.submit("c2", [NewRequest("pushed-again", b"p")], into="w", on_top=False)
    assert await states_after_a_round() == {
        "claimed": RequestState.RUNNING,
        "lost-push": RequestState.UNKNOWN,
        "lost-claim": RequestState.UNKNOWN,
        "pushed-again": RequestState.PENDING,
        "queued": RequestState.PENDING,
    }
    [again] = await sharded.submit("c", [NewRequest("lost-push", b"p")], into="w", on_top=False)
    assert not again.shared  # made anew, and queued
    assert [await sharded.claim("w") for _ in range(3)] == [
        Claimed(key, b"p") for key in ("queued", "pushed-again", "lost-push")
    ]


async def refused(backend: RedisBackend) -> str:
    """What `backend` says when it refuses to connect (it is closed after)."""
    try:
        with pytest.raises(ConfigurationError) as refusal:
            await backend.connect()
    finally:
        await backend.close()
    return str(refusal.value)


async def test_a_grid_is_kept_in_one_layout(redis_url: str) -> None:
    sharded = await _connected(redis_url)
    try:
        one_slot = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX))
        assert "'sharded' layout" in await refused(one_slot)
        await sharded.flush()  # a one-slot grid from now on: its records in the grid's slot
    finally:
        await sharded.close()
    one_slot = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX))
    await one_slot.connect()
    try:
        await one_slot.submit("c", [NewRequest("k", b"p")], into="w", on_top=True)
        settings = Settings(key_prefix=PREFIX, layout="sharded")
        assert "'one-slot' layout" in await refused(
            ShardedRedisBackend(redis_url, settings=settings)
        )
    finally:
        await one_slot.flush()
        await one_slot.close()
