"""Cached results moved out of the grid's slot into their own keys' slots (`spread_results`,
see girder/backends/redis_results.py): where they go, that every read finds them, and that a
move overlapped by a clear, a new run or garbage leaves nothing wrong behind."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from girder.backends import redis as redis_backend
from girder.backends import redis_results, resp
from girder.backends.base import NodeKind, RequestState, StateBackend
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.testing.conformance import LONG, blob, out, put, run
from girder.testing.redis_cluster import RedisClusterServers

pytestmark = pytest.mark.redis

PREFIX = "spread"


def record(key: str) -> str:
    return "{" + PREFIX + "}:r:" + key


def moved(key: str) -> str:
    return "{" + PREFIX + ":" + key + "}:v"


async def spreading(url: str) -> RedisBackend:
    backend = RedisBackend(url, settings=Settings(key_prefix=PREFIX, spread_results=True))
    await backend.connect()
    return backend


@pytest.fixture(autouse=True)
def quick_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moves delete the records 50 ms after their copies are written (not a second)."""
    monkeypatch.setattr(redis_results, "DROP_DELAY_S", 0.05)


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = await spreading(redis_url)
    await backend.join("w", NodeKind.WORKER, None, LONG)
    yield backend
    await backend.close()


async def settled(backend: RedisBackend) -> None:
    assert backend._results is not None
    await asyncio.wait_for(backend._results.settled(), 10)


async def complete_cached(
    backend: RedisBackend, key: str, outcome: bytes, ttl: float | None = 600.0
) -> None:
    """Submit `key`, claim it and complete it as a cached result of function "f"."""
    await put(backend, "w", [key])
    claimed = await backend.claim("w")
    assert claimed is not None
    assert claimed.key == key
    await backend.complete("w", key, outcome, cache=True, ttl=ttl, function="f")


async def test_a_cached_result_moves_to_its_own_slot_and_every_read_finds_it(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await complete_cached(backend, "k1", out("k1"))
    await settled(backend)
    assert not await raw.exists(record("k1"))
    assert await raw.get(moved("k1")) == b"1:" + out("k1")
    assert 590_000 < await raw.pttl(moved("k1")) <= 600_000  # the record's time to live
    [submitted] = await put(backend, "c", ["k1"])
    assert submitted.outcome == out("k1")
    assert await raw.llen("{" + PREFIX + "}:work:c") == 0  # nothing queued: found in its slot
    assert await backend.state("k1") is RequestState.DONE
    assert await backend.result("k1") == out("k1")
    stats = await backend.cache_stats()
    assert (stats.entries, stats.bytes, list(stats.functions)) == (1, len(out("k1")), ["f"])


async def test_a_submission_that_looked_just_before_the_copy_still_finds_the_record(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is written, and a submission whose look in the key's slot came just before
    (here: a look that finds nothing) reaches the grid's slot: the record is still there for
    `DROP_DELAY_S`, so the key is not computed again."""
    monkeypatch.setattr(redis_results, "DROP_DELAY_S", 0.5)
    await complete_cached(backend, "k1", out("k1"))
    assert backend._results is not None
    await backend._results.copied()
    assert await raw.exists(record("k1"), moved("k1")) == 2

    async def too_early(keys: object) -> dict[str, bytes]:
        return {}

    monkeypatch.setattr(backend._results, "lookup", too_early)
    [submitted] = await put(backend, "c", ["k1"])
    assert submitted.outcome == out("k1")
    assert await raw.llen("{" + PREFIX + "}:work:c") == 0
    await settled(backend)
    assert await raw.exists(record("k1"), moved("k1")) == 1


async def test_a_key_completed_by_two_processes_is_moved_by_one_and_stays_cached(
    backend: RedisBackend, redis_url: str, raw: aioredis.Redis
) -> None:
    """A worker that woke past its lease completes a key that another one completed already:
    its completion changes nothing, and both processes would move the key. Only the first move
    marks the record; the other leaves it alone (before, the second move found the record gone,
    took it for a cleared one and deleted the copy: the result was lost)."""
    other = await spreading(redis_url)
    try:
        await complete_cached(backend, "k1", out("k1"))
        await other.complete("late", "k1", out("k1"), cache=True, ttl=600, function="f")
        await asyncio.wait_for(other._results.settled(), 10)  # type: ignore[union-attr]
        await settled(backend)
    finally:
        await other.close()
    assert await raw.exists(record("k1")) == 0
    assert await raw.get(moved("k1")) == b"1:" + out("k1")
    [submitted] = await put(backend, "c", ["k1"])
    assert submitted.outcome == out("k1")


async def test_a_submission_stalled_since_its_look_looks_again(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process looked for the key in its own slot, found nothing, and stalled (a SIGSTOP, a
    reconcile holding its calls back) past the move of the key's result: its script finds no
    record. The script sees a record was dropped since the look, queues nothing, and says to
    look again; the second look finds the result."""
    await complete_cached(backend, "k1", out("k1"))
    await settled(backend)
    assert await raw.exists(record("k1")) == 0
    original = backend._results_lookup
    looks: list[str] = []

    async def stalled_first(keys: Sequence[str]) -> tuple[str, dict[str, bytes]]:
        looked_at, found = await original(keys)
        if not looks:
            looks.append("stale")
            return str(int(looked_at) - 2000), {}  # looked two seconds ago, before the move
        looks.append("fresh")
        return looked_at, found

    monkeypatch.setattr(backend, "_results_lookup", stalled_first)
    [submitted] = await put(backend, "c", ["k1"])
    assert looks == ["stale", "fresh"]
    assert submitted.outcome == out("k1")
    assert await raw.exists(record("k1"), "{" + PREFIX + "}:work:c") == 0


async def test_a_look_whose_clock_came_late_is_made_again(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grid's server answers the time late (it was out of reach while the keys' slots
    answered the look): the time may be later than a drop the look missed, so the look is
    made again after it."""
    await complete_cached(backend, "k1", out("k1"))
    await settled(backend)
    assert backend._results is not None
    original_lookup = backend._results.lookup
    looks: list[int] = []

    async def before_the_copy_first(keys: Sequence[str]) -> dict[str, bytes]:
        looks.append(len(keys))
        return {} if len(looks) == 1 else await original_lookup(keys)

    original = resp.Connection.pipeline

    async def late_clock(self: resp.Connection, commands: Sequence[resp.Command]) -> list[Any]:
        if commands[0][:1] == ("TIME",):
            await asyncio.sleep(0.2)
        return await original(self, commands)

    monkeypatch.setattr(backend._results, "lookup", before_the_copy_first)
    monkeypatch.setattr(resp.Connection, "pipeline", late_clock)
    [submitted] = await put(backend, "c", ["k1"])
    assert looks == [1, 1]
    assert submitted.outcome == out("k1")
    assert await raw.exists(record("k1"), "{" + PREFIX + "}:work:c") == 0


async def test_a_result_that_never_expires_moves_without_an_expiry(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await complete_cached(backend, "k1", out("k1"), ttl=None)
    await settled(backend)
    assert await raw.pttl(moved("k1")) == -1


async def test_what_is_not_a_plain_cached_result_stays_in_the_grids_slot(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A result held as a blob (its record is the blob's holder), one about to expire, and a
    completion that is not cached do not move."""
    digest, data = blob("big")
    await put(backend, "w", ["held"])
    assert await backend.claim("w") is not None
    await backend.put_blob(digest, data, holder="held")
    await backend.complete("w", "held", out("held"), cache=True, function="f")
    await complete_cached(backend, "brief", out("brief"), ttl=1.0)
    await run(backend, "w", "uncached", cache=False)
    await settled(backend)
    assert await raw.exists(record("held"), record("brief")) == 2
    assert await raw.exists(moved("held"), moved("brief"), moved("uncached")) == 0
    assert await backend.sweep_blobs(0) == 0  # the blob is still held
    assert await backend.get_blob(digest) == data


async def test_a_blob_holder_is_forgotten_by_any_completion(backend: RedisBackend) -> None:
    """The process remembers which keys hold a blob only until they complete, cached or not
    (a worker that stores large values uncached must not grow that memory for ever)."""
    digest, data = blob("uncached")
    await put(backend, "w", ["h"])
    assert await backend.claim("w") is not None
    await backend.put_blob(digest, data, holder="h")
    assert backend._results is not None
    assert backend._results._holders == {"h"}
    await backend.complete("w", "h", out("h"), cache=False)
    assert backend._results._holders == set()


async def test_clear_and_forget_reach_moved_results_and_count_each_once(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    for key in ("a", "b", "c"):
        await complete_cached(backend, key, out(key))
    await run(backend, "w", "g")  # of function ""
    await settled(backend)
    assert await raw.exists(*(moved(key) for key in "abcg")) == 4
    assert await backend.forget(["a", "nothing"]) == 1
    assert await backend.cache_clear("f") == 2
    assert await raw.exists(*(moved(key) for key in "abc")) == 0
    assert await backend.cache_size() == 1  # g's, of another function
    assert await backend.cache_clear() == 1
    assert await backend.cache_size() == 0


async def test_a_lookup_told_to_try_again_waits_instead_of_missing(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key's slot answers TRYAGAIN or CLUSTERDOWN while it fails over or migrates: the lookup
    waits it out like an outage (a miss would compute the key again)."""
    await complete_cached(backend, "k1", out("k1"))
    await settled(backend)
    original = resp.Connection.pipeline
    refused: list[bool] = []

    async def busy_once(self: resp.Connection, commands: Sequence[resp.Command]) -> list[Any]:
        if not refused and commands[0][:2] == ("GET", moved("k1")):
            refused.append(True)
            return [resp.ReplyError("TRYAGAIN Multiple keys request during rehashing of slot")]
        return await original(self, commands)

    monkeypatch.setattr(resp.Connection, "pipeline", busy_once)
    monkeypatch.setattr(redis_backend, "_RETRY_FIRST", 0.002)
    [submitted] = await put(backend, "c", ["k1"])
    assert refused == [True]
    assert submitted.outcome == out("k1")


async def test_garbage_in_a_results_slot_is_a_miss_not_an_outcome(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A list where a moved result goes, and a string that is not `<id>:<outcome>`: the key
    is computed as if nothing were cached."""
    await raw.rpush(moved("k1"), "x")
    await raw.set(moved("k2"), b"no function id")
    submitted = await put(backend, "c", ["k1", "k2"])
    assert [s.outcome for s in submitted] == [None, None]
    assert await raw.llen("{" + PREFIX + "}:work:c") == 2
    assert await backend.state("k2") is RequestState.PENDING


def overlapped_move(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], Awaitable[None]]
) -> None:
    """Run `meanwhile` between a move's read of the records and its writes of the copies."""
    write = redis_results.SpreadResults._write
    once: list[bool] = []

    async def late_write(
        self: redis_results.SpreadResults, key: str, value: bytes, ttl_ms: int
    ) -> None:
        if not once:
            once.append(True)
            await meanwhile()
        await write(self, key, value, ttl_ms)

    monkeypatch.setattr(redis_results.SpreadResults, "_write", late_write)


async def test_a_clear_that_overlaps_a_move_leaves_no_copy_behind(
    backend: RedisBackend, redis_url: str, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process clears the cache after the move read the record and before it wrote
    the copy: the move's last step sees the record gone and takes its copy back."""
    other = await spreading(redis_url)

    async def clear() -> None:
        assert await other.cache_clear() == 1

    try:
        overlapped_move(monkeypatch, clear)
        await complete_cached(backend, "k1", out("k1"))
        await settled(backend)
    finally:
        await other.close()
    assert await raw.exists(record("k1"), moved("k1")) == 0
    assert await backend.cache_size() == 0
    [submitted] = await put(backend, "c", ["k1"])
    assert submitted.outcome is None


async def test_a_key_run_again_during_its_move_keeps_its_new_outcome(
    backend: RedisBackend, redis_url: str, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record changes between the move's read and its last step (forgotten and computed
    again, with another outcome): the old copy goes, and the new outcome is what reads find."""
    other = await spreading(redis_url)

    async def run_again() -> None:
        await other.forget(["k1"])
        await put(other, "o", ["k1"])
        assert await other.claim("o") is not None
        await other.complete("o", "k1", out("k1", "new"), cache=True, ttl=600, function="f")
        await other._results.settled()  # type: ignore[union-attr]

    try:
        overlapped_move(monkeypatch, run_again)
        await complete_cached(backend, "k1", out("k1"))
        await settled(backend)
    finally:
        await other.close()
    assert await backend.result("k1") == out("k1", "new")
    [submitted] = await put(backend, "c", ["k1"])
    assert submitted.outcome == out("k1", "new")


@pytest.mark.slow
async def test_moved_results_spread_over_every_primary_of_a_cluster(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """300 cached results on 3 primaries: each holds a share (and the grid's own primary no
    record), and each is read back from its own slot."""
    backend = await spreading(redis_cluster_url)
    try:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
        for key in keys:
            await complete_cached(backend, key, out(key))
        await settled(backend)
        shares = []
        for primary in redis_cluster.primaries():
            client = aioredis.Redis(host="127.0.0.1", port=primary.port)
            try:
                names = [name async for name in client.scan_iter(match="{" + PREFIX + ":*}:v")]
                shares.append(len(names))
                assert not [n async for n in client.scan_iter(match="{" + PREFIX + "}:r:*")]
            finally:
                await client.aclose()
        assert sum(shares) == 300
        assert min(shares) > 50, shares  # 100 each, give or take the hash
        submitted = await put(backend, "c", keys)
        assert [s.outcome for s in submitted] == [out(key) for key in keys]
        assert await backend.cache_size() == 300
        assert await backend.cache_clear() == 300
    finally:
        await backend.close()


async def test_a_backend_closed_mid_move_leaves_its_results_cached(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """Closing stops the moves under way: what did not move is still cached where it was."""
    backend: StateBackend = await spreading(redis_url)
    assert isinstance(backend, RedisBackend)
    await backend.join("w", NodeKind.WORKER, None, LONG)
    for key in ("a", "b"):
        await complete_cached(backend, key, out(key))
    await backend.close()
    reader = await spreading(redis_url)
    try:
        submitted = await put(reader, "c", ["a", "b"])
        assert [s.outcome for s in submitted] == [out("a"), out("b")]
    finally:
        await reader.close()


async def test_a_node_that_leaves_takes_the_journal_of_its_moves_along(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A move's last step is journaled under the node that completed the keys: when the node
    leaves (or is reaped), its journal goes, moves and all; the moved result stays."""
    journal = "{" + PREFIX + "}:journal:w"
    await complete_cached(backend, "k1", out("k1"))
    await settled(backend)
    assert await raw.exists(journal)
    await backend.leave("w")
    assert not await raw.exists(journal)
    assert await raw.exists(moved("k1"))
    assert not await raw.keys("{" + PREFIX + "}:journal:*")


async def plain(url: str) -> RedisBackend:
    """A backend without `spread_results`."""
    backend = RedisBackend(url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    return backend


async def test_a_process_without_the_setting_finds_counts_and_clears_moved_results(
    backend: RedisBackend, redis_url: str, raw: aioredis.Redis
) -> None:
    """Results moved by processes with `spread_results` are found, counted and cleared by one
    without it (a `girder cache clear` run without GIRDER_SPREAD_RESULTS, say): it sees the
    grid has moved results when it connects. Before, it computed them again, and a clear
    left them cached."""
    await complete_cached(backend, "k1", out("k1"))
    await settled(backend)
    other = await plain(redis_url)
    try:
        [submitted] = await put(other, "c", ["k1"])
        assert submitted.outcome == out("k1")
        assert await other.cache_size() == 1
        assert await other.cache_clear() == 1
        assert not await raw.exists(moved("k1"))
        await complete_cached(other, "k2", out("k2"))
        assert other._results is not None
        assert other._results._mover is None  # it moves nothing of its own
        assert await raw.exists(record("k2")) == 1
    finally:
        await other.close()


async def test_a_process_without_the_setting_learns_of_moved_results_at_its_heartbeat(
    backend: RedisBackend, redis_url: str
) -> None:
    other = await plain(redis_url)  # before any result moved
    try:
        await complete_cached(backend, "k1", out("k1"))
        await settled(backend)
        await other.join("o", NodeKind.CLIENT, None, LONG)
        await other.heartbeat("o", LONG)
        [submitted] = await put(other, "c", ["k1"])
        assert submitted.outcome == out("k1")
    finally:
        await other.close()


async def test_a_completion_sent_again_reports_its_moves_again_but_not_a_forged_record(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A completion whose reply was lost is sent again: it reports the records it marked
    again (step 1 of their moves), with their function and outcome; a record whose function
    someone took meanwhile is reported not at all (not as a broken entry)."""

    async def complete_script(key: str, mover: str) -> list[Any]:
        args = ("w", 0, "", "", mover, key, out(key), "m", 600_000, "f")
        reply: list[Any] = await backend._run("complete", "", "", 0, *args)
        return reply

    for key in ("kept", "forged"):
        await put(backend, "w", [key])
        assert (await backend.claim("w")) is not None
        _, first, _ = await complete_script(key, f"mover-{key}")
        assert first[0] == key.encode()
        assert first[2:] == [600_000, out(key)]
        _, again, _ = await complete_script(key, f"mover-{key}")
        assert again[:2] == first[:2]
        assert again[3] == out(key)
    await raw.hdel(record("forged"), "f")
    _, forged, _ = await complete_script("forged", "mover-forged")
    assert forged == []
    _, other, _ = await complete_script("kept", "another mover")
    assert other == []  # a completion of a done key by another changes and reports nothing
