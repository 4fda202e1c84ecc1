"""The distributed grid in real processes (the `girder` command) behind Redis Sentinel: a
primary killed with SIGKILL mid-job, the replica promoted by the sentinel, and every request
finishing with the right answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from gridfns import add, fan_of_fans, fib
from processes import (
    CLIENT_OPTIONS,
    GridProcesses,
    any_running,
    cached_at_least,
    nothing_runs,
    wait_for_nodes,
    wait_until,
)

import girder
from girder.testing.redis_sentinel import RedisSentinelGroup

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def grid_processes(redis_sentinel_url: str, tmp_path: Path) -> Iterator[GridProcesses]:
    procs = GridProcesses(redis_sentinel_url, tmp_path)
    try:
        procs.distributor()
        procs.worker("w1")
        procs.worker("w2")
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
async def client(
    redis_sentinel_url: str, grid_processes: GridProcesses
) -> AsyncIterator[girder.Grid]:
    await wait_for_nodes(redis_sentinel_url, workers=2)
    async with girder.Grid.connect(redis_sentinel_url, pool="pool", **CLIENT_OPTIONS) as grid:
        yield grid


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def test_nested_jobs_on_worker_processes(client: girder.Grid) -> None:
    assert await asyncio.wait_for(client.call(fib, 100), 60) == _fib(100)


async def test_a_primary_killed_mid_job_is_replaced_and_every_request_finishes(
    client: girder.Grid,
    redis_sentinel: RedisSentinelGroup,
    redis_sentinel_url: str,
    grid_processes: GridProcesses,
) -> None:
    old = redis_sentinel.primary()
    job = client.submit(fan_of_fans, 4, 6, 50, "sentinel-failover")
    many = asyncio.ensure_future(client.call_all([(add, i, 17) for i in range(3000)]))
    await wait_until(lambda: any_running(redis_sentinel_url), what="work running")
    promoted = await asyncio.to_thread(redis_sentinel.fail_over)
    assert promoted is not old
    assert not old.running
    assert await asyncio.wait_for(job, 120) == 4 * sum(range(6))
    assert await asyncio.wait_for(many, 120) == [i + 17 for i in range(3000)]
    assert "request failed" not in grid_processes.log_text()


async def test_writes_lost_with_the_primary_are_recovered(
    client: girder.Grid,
    redis_sentinel: RedisSentinelGroup,
    redis_sentinel_url: str,
    grid_processes: GridProcesses,
) -> None:
    """The primary acknowledges completions its replica never gets, then dies: the promoted
    replica holds those keys as running under live workers done with them. Each node's
    heartbeat lands on another server, so it reconciles (the keys are given back and run
    again) and submits again: the job finishes with the right answer, and no key is left
    running."""
    job = client.submit(fan_of_fans, 3, 8, 300, "sentinel-lost-writes")
    await wait_until(lambda: any_running(redis_sentinel_url), what="leaves running")
    await asyncio.to_thread(redis_sentinel.stall_replication)
    await wait_until(
        lambda: cached_at_least(redis_sentinel_url, 6), what="leaves finished, unreplicated"
    )
    await asyncio.to_thread(redis_sentinel.fail_over)
    assert await asyncio.wait_for(job, 120) == 3 * sum(range(8))

    async def every_node_reconciled() -> bool:
        logs = grid_processes.log_text().split("--- ")[1:]
        return len(logs) == 3 and all("writes_may_be_lost=True" in log for log in logs)

    await wait_until(every_node_reconciled, what="each node to see another server")
    await wait_until(lambda: nothing_runs(redis_sentinel_url), what="no key left running")
