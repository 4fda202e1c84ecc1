"""Faults of the Redis server itself, with the grid in real processes: a short outage, a server
restored from an older snapshot, and a server out of memory. Each test runs its own
`redis-server` (its snapshots must not leak into other tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from gridfns import add, fan_of_fans, identity, staged, tree
from processes import (
    FAST_RECOVERY,
    GridProcesses,
    cached_at_least,
    nodes,
    wait_for_nodes,
    wait_until,
)

import girder
from girder.backends.base import NodeKind
from girder.backends.redis import RedisBackend
from girder.backends.redis_keys import RedisKeys
from girder.errors import BackendError
from girder.testing.proxy import FaultProxy
from girder.testing.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

CLIENT_OPTIONS: dict[str, Any] = {
    key.removeprefix("GIRDER_").lower(): float(value) for key, value in FAST_RECOVERY.items()
}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of this test alone: a restart loads the snapshot that this test saved."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def grid_processes(server: RedisServer, tmp_path: Path) -> Iterator[GridProcesses]:
    """Workers that run one request at a time (no baton lent to a request that waits on I/O),
    so that the leaves of a job finish one after the other while the test acts."""
    procs = GridProcesses(server.url, tmp_path, GIRDER_IO_CONCURRENCY="0")
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[girder.Grid]:
    async with girder.Grid.connect(server.url, pool="pool", **CLIENT_OPTIONS) as grid:
        yield grid


async def _running(url: str) -> bool:
    return any(n.running > 0 for n in await nodes(url) if n.kind == NodeKind.WORKER)


async def _start_grid(procs: GridProcesses, url: str) -> None:
    procs.distributor()
    procs.worker("w1")
    procs.worker("w2")
    await wait_for_nodes(url, workers=2)


async def test_a_short_redis_outage_fails_no_request(
    grid_processes: GridProcesses, client: girder.Grid, server: RedisServer
) -> None:
    """Redis is gone for over a second while nested calls are under way: nodes wait and
    retry, and the job finishes with the right answer (no `BackendError` becomes a request's
    outcome)."""
    await _start_grid(grid_processes, server.url)
    # 63 calls of 150 ms, one at a time per worker: about 4.7 s on the two workers.
    job = client.submit(staged, 5, 150, "outage")
    await wait_until(lambda: cached_at_least(server.url, 4), what="the first leaves finished")
    server.command("SAVE")
    server.kill()
    assert not job.done()  # the outage comes mid-job
    await asyncio.sleep(1.5)  # the outage itself: nothing to wait for but time
    server.start()  # with the snapshot saved just before the kill
    assert await asyncio.wait_for(job, 90) == 2**5
    assert "Redis unreachable" in grid_processes.log_text()  # the nodes met the outage
    assert "request failed" not in grid_processes.log_text()


async def test_nodes_started_while_redis_is_down_wait_for_it(
    grid_processes: GridProcesses, server: RedisServer
) -> None:
    """A distributor and a worker started while Redis is down (as a supervisor restarts them
    during a restart of Redis) wait for it, saying so, instead of exiting; then they serve."""
    server.kill()
    started = [grid_processes.distributor(), grid_processes.worker("w1")]

    async def both_waiting() -> bool:
        return grid_processes.log_text().count("backend unreachable at start") == 2

    await wait_until(both_waiting, what="both nodes waiting for Redis")
    assert [proc.poll() for proc in started] == [None, None]
    server.start()
    await wait_for_nodes(server.url, workers=1)
    async with girder.Grid.connect(server.url, pool="pool", **CLIENT_OPTIONS) as grid:
        assert await asyncio.wait_for(grid.call(add, 2, 3), 30) == 5


async def test_a_node_waiting_for_redis_at_start_stops_on_sigterm(
    grid_processes: GridProcesses, server: RedisServer
) -> None:
    server.kill()
    distributor = grid_processes.distributor()

    async def waiting() -> bool:
        return "backend unreachable at start" in grid_processes.log_text()

    await wait_until(waiting, what="the distributor waiting for Redis")
    distributor.terminate()
    assert await asyncio.to_thread(distributor.wait, 10) == 0


async def test_a_redis_restored_from_an_older_snapshot_does_not_hang_the_grid(
    grid_processes: GridProcesses, client: girder.Grid, server: RedisServer
) -> None:
    """The snapshot says leaves run under live workers that have long finished them (their
    completions were lost with the newer writes). The nodes see the grid's clock go back,
    give back what they do not run, submit again what they wait for, and the job finishes."""
    await _start_grid(grid_processes, server.url)
    job = client.submit(fan_of_fans, 3, 8, 400, "restore")
    await wait_until(lambda: _running(server.url), what="leaves running")
    server.command("SAVE")
    await wait_until(
        lambda: cached_at_least(server.url, 6), what="leaves finished after the snapshot"
    )
    server.restart()  # loads the older snapshot
    assert await asyncio.wait_for(job, 60) == 3 * sum(range(8))
    assert "clock_went_back=True" in grid_processes.log_text()


async def test_redis_out_of_memory_gives_the_caller_a_clear_error(redis_url: str) -> None:
    """With `maxmemory` reached and `noeviction`, Redis refuses writes: the caller gets a
    `BackendError` saying so (no silent wait), and the grid works again once there is room."""
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with girder.Grid.local(workers=2, backend=redis_url, **CLIENT_OPTIONS) as grid:
            assert await grid.call(add, 1, 2) == 3
            used = int((await raw.info("memory"))["used_memory"])
            await raw.config_set("maxmemory-policy", "noeviction")
            await raw.config_set("maxmemory", str(used + 64 * 1024))
            with pytest.raises(BackendError, match="out of memory"):
                await asyncio.wait_for(
                    grid.call_all([(identity, bytes([i]) * 50_000) for i in range(100)]), 30
                )
            await raw.config_set("maxmemory", "0")
            assert await asyncio.wait_for(grid.call(add, 2, 3), 30) == 5
    finally:
        await raw.config_set("maxmemory", "0")
        await raw.aclose()


async def test_an_evicting_policy_is_warned_about_and_hangs_nothing(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`allkeys-lru` may evict records, waiter sets and queues of running work. Girder warns at
    start, and whatever is evicted, every call still returns (the keys awaited for long are
    submitted again)."""
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.config_set("maxmemory-policy", "allkeys-lru")
        backend = RedisBackend(redis_url)
        with caplog.at_level(logging.WARNING, logger="girder"):
            await backend.connect()
        await backend.close()
        events = [getattr(record, "girder_event", {}) for record in caplog.records]
        assert any(event.get("policy") == "allkeys-lru" for event in events)
        grid = girder.Grid.local(workers=2, backend=redis_url, **CLIENT_OPTIONS)
        await grid.start()
        try:
            used = int((await raw.info("memory"))["used_memory"])
            await raw.config_set("maxmemory", str(used + 1024 * 1024))
            values = [i.to_bytes(2, "big") * 4_000 for i in range(400)]
            results = await asyncio.wait_for(_call_in_waves(grid, values, 100), 90)
            assert results == values
            assert int((await raw.info("stats"))["evicted_keys"]) > 0
        finally:
            await grid.stop()
    finally:
        await raw.config_set("maxmemory", "0")
        await raw.config_set("maxmemory-policy", "noeviction")
        await raw.aclose()


async def test_a_key_found_lost_has_every_awaited_key_checked_soon(
    server: RedisServer, grid_processes: GridProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """A key awaited for long is submitted again less and less often. Once a submission finds
    one the backend lost (evicted, or lost in a failover), the node does not leave the others to
    that backoff: every key it waits for is submitted again soon."""
    grid_processes.distributor()  # and no worker: the keys stay pending
    await wait_for_nodes(server.url, workers=0)
    options = {"heartbeat_interval": 0.05, "heartbeat_ttl": 0.5, "reap_interval": 0.2}
    first = 2 * options["heartbeat_ttl"] + options["reap_interval"]  # then 2x, 4x, 8x as long
    raw = aioredis.Redis.from_url(server.url)
    keys = RedisKeys("girder")

    def rechecks() -> int:
        return sum(r.getMessage().startswith("submitting again keys") for r in caplog.records)

    async def has_record(key: str) -> bool:
        return bool(await raw.exists(keys.record(key)))

    try:
        with caplog.at_level(logging.INFO, logger="girder"):
            async with girder.Grid.connect(server.url, pool="pool", **options) as grid:
                old = grid.submit(add, 1, 1)
                await wait_until(_async(lambda: rechecks() >= 3), 20, "three rechecks")
                # Its next submission is 8 * first away; a newer key's first is `first` away.
                new = grid.submit(add, 2, 2)
                await wait_until(lambda: has_record(new.key), 5, "the new key's record")
                await raw.delete(keys.record(old.key), keys.record(new.key))
                # Without the rule, the old key would be back only 8 * first after its last
                # submission.
                await wait_until(lambda: has_record(new.key), 3 * first, "the new key back")
                await wait_until(lambda: has_record(old.key), 3 * first, "the old key back")
                assert grid.client.stats.lost == 2
                old.cancel()
                new.cancel()
    finally:
        await raw.aclose()
    warned = [r for r in caplog.records if "checking every awaited key" in r.getMessage()]
    assert warned


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


async def _call_in_waves(grid: girder.Grid, values: list[bytes], wave: int) -> list[object]:
    """`identity` of each value, `wave` calls at a time. Evictions still take records, queues
    and nodes; all 400 at once would put more payloads in flight than the server may hold, and
    the grid would spend minutes submitting them again as fast as they are evicted."""
    results: list[object] = []
    for start in range(0, len(values), wave):
        batch = values[start : start + wave]
        results += await asyncio.gather(*(grid.call(identity, value) for value in batch))
    return results


async def test_lost_replies_and_cut_connections_lose_and_orphan_nothing(
    fault_proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    """Between the nodes and Redis, a proxy drops replies after the scripts ran, cuts
    connections before commands and delays replies, at random (seeded) under nested load. Every
    answer is right, and once the faults stop no key is left running under a node that does
    not run it: every resent script was applied once."""
    procs = GridProcesses(fault_proxy.url, tmp_path)
    try:
        procs.distributor()
        procs.worker("w1")
        procs.worker("w2")
        await wait_for_nodes(redis_url, workers=2)
        async with girder.Grid.connect(fault_proxy.url, **CLIENT_OPTIONS) as grid:
            fault_proxy.chaos(8, p_drop=0.03, p_cut=0.03, p_delay=0.05, max_delay=0.05)
            jobs = [grid.submit(fan_of_fans, 3, 5, 20, f"proxy-{i}") for i in range(4)]
            jobs.append(grid.submit(tree, 7, 0))
            results = await asyncio.wait_for(asyncio.gather(*jobs), 90)
            fault_proxy.calm()
            assert results == [3 * sum(range(5))] * 4 + [255]
            assert fault_proxy.replies_dropped > 0
            assert fault_proxy.connections_cut > 0
            assert await grid.call(add, 1, 1) == 2

        async def settled() -> bool:
            return all(n.running == 0 for n in await nodes(redis_url))

        await wait_until(settled, what="no key left running once the work is done")
    finally:
        procs.stop_all()
