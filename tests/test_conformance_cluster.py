"""The backend conformance suite on `RedisBackend` in one slot of a real Redis Cluster
(3 primaries, 3 replicas), and what only a cluster does: redirections and failovers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from backends import MovedResultsPublishNoHitEvents, connected, lose_every_reply_once
from processes import wait_until
from redis.crc import key_slot as redis_key_slot

from girder.backends import open_backend
from girder.backends.base import Claimed, NodeKind, Notification, RequestState, StateBackend
from girder.backends.cluster import key_slot, parse_cluster_url
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.errors import BackendError, ConfigurationError
from girder.testing.conformance import BackendConformance, new, out, put
from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "conformance"


class TestRedisClusterBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, redis_cluster_url: str) -> AsyncIterator[StateBackend]:
        backend = open_backend(redis_cluster_url, settings=Settings(key_prefix=PREFIX))
        assert isinstance(backend, RedisBackend)
        await backend.connect()
        yield backend
        await backend.close()


class TestRedisClusterBackendSpreadingResultsAndNotifications(
    MovedResultsPublishNoHitEvents, BackendConformance
):
    """The suite with cached results moved to their keys' own slots (`spread_results`) and
    each node's notifications in a slot of its own (`spread_notifications`): most of both on
    other primaries than the grid's. (On one server, each setting runs alone with lost
    replies.)"""

    @pytest.fixture
    async def backend(self, redis_cluster_url: str) -> AsyncIterator[StateBackend]:
        settings = {"key_prefix": PREFIX, "spread_results": True, "spread_notifications": True}
        async with connected(redis_cluster_url, **settings) as backend:
            yield backend


class TestRedisClusterBackendLosingEveryReplyOnce(BackendConformance):
    """The suite again on the cluster, the reply of every distinct command lost once after the
    server ran it (see the same class in test_conformance_redis.py)."""

    @pytest.fixture
    async def backend(
        self, redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[StateBackend]:
        seen = lose_every_reply_once(monkeypatch)
        backend = RedisBackend(redis_cluster_url, settings=Settings(key_prefix=PREFIX))
        await backend.connect()
        yield backend
        await backend.close()
        assert seen, "no reply was lost"


@pytest.fixture
async def backend(redis_cluster_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_cluster_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    yield backend
    await backend.close()


def _anchor() -> str:
    return f"{{{PREFIX}}}:leases"


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://host",
        "redis+cluster://host:port",
        "redis+cluster://a:1,b",
        "redis+cluster://a:1/3",
        "rediss+cluster://a:1?ssl_cert_reqs=maybe",
        "redis+clusters://a:1",
    ],
)
def test_a_bad_cluster_url_says_what_is_wrong(url: str) -> None:
    with pytest.raises(ConfigurationError, match="bad Redis URL"):
        RedisBackend(url)


def test_a_cluster_url_names_its_seeds_and_credentials() -> None:
    seeds = parse_cluster_url("redis+cluster://me:s%40cret@10.0.0.1:7000,[::1]:7001")
    assert [(seed.host, seed.port) for seed in seeds] == [("10.0.0.1", 7000), ("::1", 7001)]
    assert {(seed.username, seed.password) for seed in seeds} == {("me", "s@cret")}
    backend = RedisBackend("redis+cluster://me:secret@h:1,h:2")
    assert "secret" not in backend.url


def test_a_tls_cluster_url_gives_every_node_its_tls_context() -> None:
    seeds = parse_cluster_url("rediss+cluster://a:1,b:2?ssl_cert_reqs=none")
    tls = seeds[0].tls
    assert tls is not None
    assert tls.verify_mode == ssl.CERT_NONE
    assert all(seed.tls is tls for seed in seeds)  # and so every node the slot map names
    verified = parse_cluster_url("rediss+cluster://a:1")[0].tls
    assert verified is not None
    assert verified.verify_mode == ssl.CERT_REQUIRED
    assert all(seed.tls is None for seed in parse_cluster_url("redis+cluster://a:1,b:2"))
    assert isinstance(open_backend("rediss+cluster://a:1"), RedisBackend)


@pytest.mark.parametrize(
    "key",
    ["", "a", "{conformance}:leases", "x{}y", "{}{a}", "a{b}c{d}", "\u00e9t\u00e9", "k" * 300],
)
def test_key_slots_are_those_of_redis(key: str) -> None:
    assert key_slot(key) == redis_key_slot(key.encode())


async def test_the_grid_lives_on_the_primary_of_its_slot(
    backend: RedisBackend, redis_cluster: RedisClusterServers
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["a", "b"], into="w")
    owner = redis_cluster.owner(redis_cluster.keyslot(_anchor()))
    for server in redis_cluster.primaries():
        count = int(str(server.command("DBSIZE")))
        assert (count > 0) == (server is owner)


async def test_work_goes_on_when_the_primary_dies_and_its_replica_takes_over(
    backend: RedisBackend, redis_cluster: RedisClusterServers
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k2", "k1"], into="w")
    owner = redis_cluster.owner(redis_cluster.keyslot(_anchor()))
    redis_cluster.wait_replicated(owner)  # nothing is lost with the primary
    claiming = asyncio.create_task(backend.claim("w"))
    redis_cluster.fail_over(owner)
    assert await asyncio.wait_for(claiming, 30) is not None
    assert await backend.claim("w") is not None
    assert await backend.claim("w") is None
    assert [info.node for info in await backend.nodes()] == ["w"]


def _start_migration(redis_cluster: RedisClusterServers) -> tuple[RedisServer, RedisServer]:
    """Begin moving the grid's slot to another primary: (source, target)."""
    slot = redis_cluster.keyslot(_anchor())
    target = next(s for s in redis_cluster.primaries() if s is not redis_cluster.owner(slot))
    return redis_cluster.begin_slot_move(slot, target), target


def _finish_migration(
    redis_cluster: RedisClusterServers, source: RedisServer, target: RedisServer
) -> None:
    """Move every key left in the grid's slot, then give the slot to `target`."""
    slot = redis_cluster.keyslot(_anchor())
    keys = source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "1000")
    assert isinstance(keys, list)
    redis_cluster.migrate_keys(source, target, [str(key) for key in keys])
    redis_cluster.end_slot_move(slot, target)
    assert int(str(source.command("DBSIZE"))) == 0


async def test_a_migrating_slot_is_waited_out_then_followed(
    backend: RedisBackend, redis_cluster: RedisClusterServers
) -> None:
    """The grid's slot moves to another primary key by key. A command for a key already moved
    (ASK) waits until the slot has moved (MOVED) instead of running on the target, where the
    keys not moved yet would look absent; then everything goes to the target."""
    await put(backend, "c", ["k"], into="w")
    assert await backend.claim("w") is not None
    await backend.complete("w", "k", out("k"), cache=True)
    source, target = _start_migration(redis_cluster)
    redis_cluster.migrate_keys(source, target, [f"{{{PREFIX}}}:r:k"])
    source.command("CONFIG", "RESETSTAT")
    reading = asyncio.create_task(backend.result("k"))  # the source answers ASK
    await wait_until(lambda: _called(source, "hmget"), what="the read sent to the source")
    assert not reading.done()
    _finish_migration(redis_cluster, source, target)
    assert redis_cluster.owner(key_slot(_anchor())) is target
    assert await asyncio.wait_for(reading, 30) == out("k")  # MOVED, then the target
    assert "cmdstat_asking" not in target.info("commandstats")  # ASK was never followed
    await put(backend, "c", ["k2"], into="w")  # scripts, reloaded on the target
    assert await backend.claim("w") == Claimed("k2", new("k2").payload)


async def test_a_script_waits_out_a_migration_of_the_grids_slot_and_then_runs_whole(
    backend: RedisBackend, redis_cluster: RedisClusterServers
) -> None:
    """A completion is sent after the client's inbox moved to the target: on the source it
    would store the outcome and stop at the inbox (Redis has no rollback), its waiter never
    told. The key it declares that never exists makes the source refuse it before it runs;
    it waits for the end of the move, and runs whole on the target."""
    await backend.join("c", NodeKind.CLIENT, None, 60)
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k0", "k"], into="w")
    for key in ("k", "k0"):  # the top of the stack first
        assert await backend.claim("w") == Claimed(key, new(key).payload)
    await backend.complete("w", "k0", out("k0"), cache=True)  # the inbox holds its note
    source, target = _start_migration(redis_cluster)
    redis_cluster.migrate_keys(source, target, [f"{{{PREFIX}}}:inbox:c"])
    source.command("CONFIG", "RESETSTAT")
    completing = asyncio.create_task(backend.complete("w", "k", out("k"), cache=True))
    await wait_until(lambda: _refused(source, "evalsha"), what="the completion refused")
    assert await backend.state("k") == RequestState.RUNNING  # (the read waits too)
    _finish_migration(redis_cluster, source, target)
    await asyncio.wait_for(completing, 30)
    assert not await _failed(source, "evalsha")  # nothing ran on the source
    notes = await backend.take_notifications("c", 5)
    notes += await backend.take_notifications("c", 0.1)
    assert notes == [Notification("k0", out("k0")), Notification("k", out("k"))]


async def test_a_script_cut_short_by_a_migration_is_reported_as_lost_writes(
    backend: RedisBackend, redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script that does not declare the absent key (as from a process that does not) runs
    on the source after the key's record moved but before its work list did: Redis stops it at
    the record, after it popped the list. The call waits for the migration, runs on the target
    (where the list is empty now), and the node's next heartbeat says writes may be half made,
    so that it reconciles and its waiters submit again; the heartbeat after that does not."""
    await backend.join("w", NodeKind.WORKER, None, 60)
    assert not (await backend.heartbeat("w", 60)).lost_writes
    await put(backend, "c", ["k"], into="w")
    declared = backend._call

    def undeclared(name: str, *args: str | bytes | int | float) -> tuple[object, ...]:
        evalsha, sha, _, leases, _migrating, *rest = declared(name, *args)
        return (evalsha, sha, 1, leases, *rest)

    monkeypatch.setattr(backend, "_call", undeclared)
    source, target = _start_migration(redis_cluster)
    redis_cluster.migrate_keys(source, target, [f"{{{PREFIX}}}:r:k"])
    source.command("CONFIG", "RESETSTAT")
    claiming = asyncio.create_task(backend.claim("w"))
    await wait_until(lambda: _failed(source, "evalsha"), what="the claim cut short")
    _finish_migration(redis_cluster, source, target)
    assert await asyncio.wait_for(claiming, 30) is None  # its pop was made on the source
    assert (await backend.heartbeat("w", 60)).lost_writes
    assert not (await backend.heartbeat("w", 60)).lost_writes
    assert await backend.state("k") == RequestState.PENDING  # for a waiter to submit again


async def _called(server: RedisServer, command: str) -> bool:
    return f"cmdstat_{command}" in server.info("commandstats")


async def _refused(server: RedisServer, command: str) -> bool:
    """Whether a call of `command` was refused before it ran (a redirection) on `server`
    since its last RESETSTAT."""
    return _commandstat(server, command, "rejected_calls") > 0


def _commandstat(server: RedisServer, command: str, name: str) -> int:
    stats = server.info("commandstats").get(f"cmdstat_{command}", "")
    fields = dict(field.split("=", 1) for field in stats.split(",") if "=" in field)
    return int(fields.get(name, "0"))


async def _failed(server: RedisServer, command: str) -> bool:
    """Whether a call of `command` failed on `server` since its last RESETSTAT."""
    return _commandstat(server, command, "failed_calls") > 0


async def test_a_cluster_node_reached_through_redis_url_is_refused_with_the_scheme_to_use(
    redis_cluster_url: str, redis_cluster: RedisClusterServers
) -> None:
    """Even the node that owns the grid's slot: it would serve until a failover, and never
    serve the blobs, which live in other slots."""
    owner = redis_cluster.owner(redis_cluster.keyslot(_anchor()))
    for server in (owner, *[s for s in redis_cluster.primaries() if s is not owner]):
        plain = RedisBackend(
            f"redis://127.0.0.1:{server.port}/0", settings=Settings(key_prefix=PREFIX)
        )
        with pytest.raises(ConfigurationError, match=r"node of a Redis Cluster.*redis\+cluster://"):
            await asyncio.wait_for(plain.connect(), 10)
        await plain.close()


async def test_a_cluster_url_for_a_single_server_says_to_use_redis_url(redis_url: str) -> None:
    single = redis_url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    backend = RedisBackend(single, settings=Settings(key_prefix=PREFIX, outage_timeout=5))
    with pytest.raises(BackendError, match=r"no cluster node.*use redis://host:port"):
        await asyncio.wait_for(backend.connect(), 10)
    await backend.close()


async def test_connecting_while_the_grids_primary_fails_over_waits_for_its_replica(
    redis_cluster_url: str, redis_cluster: RedisClusterServers
) -> None:
    """The cluster answers, the primary it names is dead: a failover is under way, which
    connecting waits out (a process started then would otherwise exit at once)."""
    owner = redis_cluster.owner(redis_cluster.keyslot(_anchor()))
    failing = asyncio.ensure_future(asyncio.to_thread(redis_cluster.fail_over, owner))

    async def killed() -> bool:
        return not owner.running

    await wait_until(killed, what="the primary killed")
    backend = RedisBackend(redis_cluster_url, settings=Settings(key_prefix=PREFIX))
    connecting = asyncio.create_task(backend.connect())
    promoted = await failing
    await asyncio.wait_for(connecting, 30)
    await backend.join("w", NodeKind.WORKER, None, 60)
    assert redis_cluster.owner(redis_cluster.keyslot(_anchor())) is promoted
    assert int(str(promoted.command("EXISTS", _anchor()))) == 1
    await backend.close()
