"""Blobs whose bytes live in a slot of their own (`girder.backends.redis_blobs`): spread over a
cluster's primaries by digest, and a put and a sweep that cross two slots in steps. The steps
are driven by hand here in the orders a race or a crash could produce, on a single server and
on a real Redis Cluster (3 primaries, 3 replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from girder.backends import redis_blobs
from girder.backends.cluster import key_slot
from girder.backends.redis import RedisBackend
from girder.backends.redis_keys import RedisKeys
from girder.config import Settings
from girder.testing.conformance import blob, put
from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer

pytestmark = [pytest.mark.redis]

PREFIX = "blobslots"
KEYS = RedisKeys(PREFIX)


@pytest.fixture(params=["redis", "cluster"])
async def servers(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, list[RedisServer]]]:
    """(backend URL, the servers that hold its keys: the primaries of a cluster)."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url: str = request.getfixturevalue("redis_url")
        yield url, [server]
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        url = request.getfixturevalue("redis_cluster_url")
        yield url, cluster.primaries()


@pytest.fixture
async def backend(servers: tuple[str, list[RedisServer]]) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(servers[0], settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    yield backend
    await backend.flush()
    await backend.close()


def keys_on(server: RedisServer, pattern: str = "*") -> list[str]:
    """Every key of `server` that matches `pattern`."""
    found: list[str] = []
    cursor = "0"
    while True:
        reply = server.command("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
        assert isinstance(reply, list)
        next_cursor, names = reply
        assert isinstance(next_cursor, str)
        assert isinstance(names, list)
        cursor = next_cursor
        found += [str(name) for name in names]
        if cursor == "0":
            return found


def all_keys(servers: Sequence[RedisServer]) -> list[str]:
    return [name for server in servers for name in keys_on(server)]


def indexed(servers: Sequence[RedisServer]) -> set[str]:
    """The digests in the grid's index (on whichever server holds it)."""
    found: set[str] = set()
    for server in servers:
        reply = (
            server.command("ZRANGE", KEYS.blobs, "0", "-1") if keys_on(server, KEYS.blobs) else []
        )
        assert isinstance(reply, list)
        found |= {str(digest) for digest in reply}
    return found


async def swept_by_hand(
    backend: RedisBackend,
) -> tuple[bytes, int, list[str], dict[str, bytes], list[str]]:
    """Steps 0 and 1 of a sweep with no grace: (cutoff, deadline, due, generations, unheld)."""
    blobs = backend._blobs
    cutoff, due = await backend._run("blob_due", 0, "", 100)
    digests = [digest.decode() for digest in due]
    generations = await blobs.generations(digests)
    deadline, unheld = await blobs.unheld(cutoff, digests)
    return cutoff, deadline, digests, generations, unheld


# -- spread ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_bytes_of_many_blobs_spread_over_the_primaries_and_flush_takes_them(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    backend = RedisBackend(redis_cluster_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    try:
        stored = dict(blob(f"spread{index}", 2000) for index in range(60))
        for digest, data in stored.items():
            await backend.put_blob(digest, data, holder="k")
        primaries = redis_cluster.primaries()
        with_bytes = [server for server in primaries if keys_on(server, KEYS.blob_pattern())]
        assert len(with_bytes) == len(primaries) == 3
        owner = redis_cluster.owner(key_slot(KEYS.leases))
        for server in primaries:  # the index and the holders stay in the grid's slot
            grid = [name for name in keys_on(server) if not KEYS.is_blob_key(name)]
            assert bool(grid) == (server is owner)
        assert await backend.blobs() == {digest: 2000 for digest in stored}
        for digest, data in stored.items():
            assert await backend.get_blob(digest) == data
        await backend.flush()
        assert all_keys(primaries) == []
    finally:
        await backend.close()


@pytest.mark.slow
async def test_a_blob_whose_slot_moved_is_followed_to_its_new_primary(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """The client learned the slot map; a blob's slot then moves to another primary: its
    commands get MOVED and go to the new owner, and a sweep there takes the bytes."""
    backend = RedisBackend(redis_cluster_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    try:
        digest, data = blob("moving")
        await backend.put_blob(digest, data, holder="gone")
        slot = key_slot(KEYS.blob(digest))
        source = redis_cluster.owner(slot)
        target = next(s for s in redis_cluster.primaries() if s is not source)
        source_id, target_id = (str(s.command("CLUSTER", "MYID")) for s in (source, target))
        target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        moved = source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "1000")
        assert isinstance(moved, list)
        assert len(moved) == 2  # the bytes and their generation
        source.command(
            "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *map(str, moved)
        )
        for server in redis_cluster.primaries():
            server.command("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        target.command("CONFIG", "RESETSTAT")
        assert await backend.get_blob(digest) == data
        assert "cmdstat_strlen" in target.info("commandstats")
        assert await backend.sweep_blobs(0) == 1
        assert keys_on(target, KEYS.blob_pattern()) == []
        assert all_keys(redis_cluster.primaries()) == []
    finally:
        await backend.close()


# -- races ----------------------------------------------------------------------------------------


async def test_a_put_after_a_sweep_found_the_blob_unheld_keeps_its_bytes(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]]
) -> None:
    """Sweep steps 0 and 1 find the blob unheld; a put (both its steps) and the record that
    holds it come before the sweep's step 2: the generation changed, the bytes stay."""
    digest, data = blob("re-put")
    await backend.put_blob(digest, data, holder="gone")  # no record: unheld
    _, _, due, generations, unheld = await swept_by_hand(backend)
    assert due == unheld == [digest]
    await backend.put_blob(digest, data, holder="k")
    await put(backend, "c", ["k"])
    assert not await backend._blobs.drop(digest, generations[digest])
    assert await backend.get_blob(digest) == data
    assert await backend.sweep_blobs(0) == 0
    assert await backend.blobs() == {digest: len(data)}


async def test_a_put_whose_bytes_a_sweep_drops_between_its_steps_writes_them_again(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bad order: sweep steps 0 and 1 (unheld), the put's step 1 (holder, index), the
    sweep's step 2 (the generation has not changed yet: the bytes go), the put's step 2 (no
    bytes to reuse: it writes them), the sweep's step 3 (held again: the index entry stays)."""
    digest, data = blob("between")
    await backend.put_blob(digest, data, holder="gone")
    cutoff, deadline, _, generations, unheld = await swept_by_hand(backend)
    assert unheld == [digest]
    original = backend._slot_script
    dropped: list[bool] = []

    async def sweep_step_2_first(name: str, keys: Sequence[str], *args: Any) -> Any:
        if name != "blob_drop" and not dropped:
            dropped.append(await backend._blobs.drop(digest, generations[digest]))
        return await original(name, keys, *args)

    monkeypatch.setattr(backend, "_slot_script", sweep_step_2_first)
    await backend.put_blob(digest, data, holder="k")
    monkeypatch.undo()
    assert dropped == [True]
    await put(backend, "c", ["k"])
    assert await backend._blobs.forget(cutoff, deadline, [digest]) == 0
    assert await backend.get_blob(digest) == data
    assert digest in indexed(servers[1])
    assert await backend.sweep_blobs(0) == 0
    assert await backend.get_blob(digest) == data


async def test_a_put_slower_than_the_window_holds_its_blob_again(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the put's steps, longer than the grace passes (here: a sweep with no grace, and
    a clock moved on by two minutes): the sweep gives the holder up and drops the index entry
    before the put writes the bytes. The put sees it was slow and runs its steps again: when it
    returns, the blob is held, indexed and stored."""
    digest, data = blob("slow-put")
    clock = [1000.0]
    monkeypatch.setattr(redis_blobs, "monotonic", lambda: clock[0])
    original = backend._slot_script
    swept: list[int] = []

    async def stalled_between_steps(name: str, keys: Sequence[str], *args: Any) -> Any:
        if name != "blob_drop" and not swept:
            swept.append(await backend.sweep_blobs(0))
            clock[0] += 120
        return await original(name, keys, *args)

    monkeypatch.setattr(backend, "_slot_script", stalled_between_steps)
    await backend.put_blob(digest, data, holder="k")
    assert swept == [1]  # the holder was given up, the entry dropped, mid-put
    await put(backend, "c", ["k"])
    assert await backend.blobs() == {digest: len(data)}
    assert await backend.sweep_blobs(0) == 0
    assert await backend.get_blob(digest) == data


async def test_a_sweep_whose_last_step_comes_past_its_deadline_leaves_it_to_the_next(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]]
) -> None:
    digest, data = blob("late-forget")
    await backend.put_blob(digest, data, holder="gone")
    cutoff, _, _, generations, unheld = await swept_by_hand(backend)
    assert unheld == [digest]
    assert await backend._blobs.drop(digest, generations[digest])
    assert await backend._blobs.forget(cutoff, 0, [digest]) == 0  # a deadline long past
    assert indexed(servers[1]) == {digest}
    assert await backend.sweep_blobs(0) == 1
    assert all_keys(servers[1]) == []


# -- crashes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps_done", [1, 2])
async def test_a_sweep_that_died_between_its_steps_leaves_nothing_after_the_next(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]], steps_done: int
) -> None:
    """A sweep dies after its step 1 (the bytes stay, indexed) or its step 2 (the index entry
    stays, its bytes gone): the next sweep finishes, and no key of the blob is left."""
    digest, data = blob(f"crash{steps_done}")
    await backend.put_blob(digest, data, holder="gone")
    _, _, _, generations, unheld = await swept_by_hand(backend)
    assert unheld == [digest]
    if steps_done == 2:
        assert await backend._blobs.drop(digest, generations[digest])
        assert await backend.get_blob(digest) is None
    else:
        assert await backend.get_blob(digest) == data
    assert indexed(servers[1]) == {digest}  # nothing unindexed in between
    assert await backend.sweep_blobs(0) == 1
    assert all_keys(servers[1]) == []


async def test_a_put_that_died_after_its_first_step_is_swept(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]]
) -> None:
    digest, _ = blob("half-put")
    assert await backend._run("blob_hold", digest, "dead-writer", "")
    assert await backend.get_blob(digest) is None
    assert await backend.sweep_blobs(0) == 1
    assert all_keys(servers[1]) == []


@pytest.mark.parametrize("forged", [b"not{a}digest", b"a/b", b"\xff\xfe"])
async def test_a_member_forged_into_the_index_does_not_stop_the_sweep(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]], forged: bytes
) -> None:
    """A member that cannot name a blob (braces, '/', not UTF-8) written into the index by
    someone else: the sweep drops it and goes on with the real blobs, and the listing skips it.
    (Its name is no blob key: without this, every sweep would fail on it, and no blob would
    ever be swept again.)"""
    digest, data = blob("beside-a-forgery")
    await backend.put_blob(digest, data, holder="gone")
    await backend._at(KEYS.blobs).execute("ZADD", KEYS.blobs, 0, forged)
    assert await backend.blobs() == {digest: len(data)}
    assert await backend.sweep_blobs(0) == 1
    assert all_keys(servers[1]) == []


# -- failover -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_blobs_survive_the_failover_of_a_primary_that_holds_their_bytes(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """The bytes of blobs on a primary other than the grid's: those replicated before it dies
    are read from its replica; puts running while it dies all return; a blob whose last write
    the dead primary never replicated (docs/scaling.md) is written again by the next put."""
    backend = RedisBackend(redis_cluster_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    try:
        grid_owner = redis_cluster.owner(key_slot(KEYS.leases))
        victim = next(server for server in redis_cluster.primaries() if server is not grid_owner)
        mine = [
            (digest, data)
            for digest, data in (blob(f"failover{index}", 5000) for index in range(200))
            if redis_cluster.owner(key_slot(KEYS.blob(digest))) is victim
        ]
        before, during = mine[:10], mine[10:30]
        assert len(during) == 20
        for digest, data in before:
            await backend.put_blob(digest, data, holder="k")
        redis_cluster.wait_replicated(victim)
        await put(backend, "c", ["k"])  # the holder's record: nothing here may be swept

        async def put_all() -> None:
            for digest, data in during:
                await backend.put_blob(digest, data, holder="k")

        putting = asyncio.create_task(put_all())
        await asyncio.to_thread(redis_cluster.fail_over, victim)
        await asyncio.wait_for(putting, 60)
        for digest, data in before:
            assert await backend.get_blob(digest) == data
        await put_all()  # again: what the failover lost is written again
        for digest, data in during:
            assert await backend.get_blob(digest) == data
        assert await backend.sweep_blobs(0) == 0
        assert set(await backend.blobs()) == {digest for digest, _ in mine[:30]}
    finally:
        await backend.flush()
        await backend.close()


async def test_bytes_whose_index_entry_was_lost_are_indexed_again_by_a_reconcile(
    backend: RedisBackend, servers: tuple[str, list[RedisServer]]
) -> None:
    """A failover of the grid's primary lost the index entry and the holders of a blob whose
    bytes (on another primary) stayed: no sweep would ever find them. The reconcile of a node
    that saw the writes lost indexes them again, as if put now, and a sweep takes them."""
    digest, data = blob("orphan")
    await backend.put_blob(digest, data, holder="gone")
    grid = next(s for s in servers[1] if s.port == _grid_primary_port(servers))
    grid.command("ZREM", KEYS.blobs, digest)  # the lost writes
    grid.command("DEL", f"{KEYS.base}blobholders:{digest}")
    assert await backend.sweep_blobs(0) == 0  # not indexed: never found
    assert await backend.get_blob(digest) == data
    assert await backend.reconcile("w", []) == 0
    assert await backend.sweep_blobs(0) == 1
    assert await backend.get_blob(digest) is None
    assert await backend.reconcile("w", []) == 0  # nothing left to index


def _grid_primary_port(servers: tuple[str, list[RedisServer]]) -> int:
    """The port of the server that holds the grid's own slot."""
    slot = str(key_slot(KEYS.blobs))
    for server in servers[1]:
        if len(servers[1]) == 1 or int(str(server.command("CLUSTER", "COUNTKEYSINSLOT", slot))):
            return server.port
    raise LookupError("no server holds the grid's slot")
