"""The distributed grid in real processes (the `girder` command) on a real Redis Cluster:
nested jobs, and a primary killed with SIGKILL mid-job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from gridfns import add, fan_of_fans, fib, identity, tree
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
from girder.testing.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

ANCHOR = "{girder}:leases"
"""A key of the slot of the grid (the default `key_prefix`)."""


@pytest.fixture
def grid_processes(redis_cluster_url: str, tmp_path: Path) -> Iterator[GridProcesses]:
    # One nap per baton (no lending while they await): the leaves of a job take long enough
    # to stall replication while some of them are still to finish.
    procs = GridProcesses(redis_cluster_url, tmp_path, GIRDER_IO_CONCURRENCY="0")
    try:
        procs.distributor()
        procs.worker("w1")
        procs.worker("w2")
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
async def client(
    redis_cluster_url: str, grid_processes: GridProcesses
) -> AsyncIterator[girder.Grid]:
    await wait_for_nodes(redis_cluster_url, workers=2)
    async with girder.Grid.connect(redis_cluster_url, pool="pool", **CLIENT_OPTIONS) as grid:
        yield grid


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def test_nested_jobs_on_worker_processes(client: girder.Grid) -> None:
    assert await asyncio.wait_for(client.call(fib, 200), 60) == _fib(200)
    assert await asyncio.wait_for(client.call(tree, 8, 0), 60) == 511
    assert await client.call_all([(add, i, 1) for i in range(500)]) == list(range(1, 501))


async def test_a_primary_killed_mid_job_is_replaced_and_every_request_finishes(
    client: girder.Grid,
    redis_cluster: RedisClusterServers,
    redis_cluster_url: str,
    grid_processes: GridProcesses,
) -> None:
    primary = redis_cluster.owner(redis_cluster.keyslot(ANCHOR))
    job = client.submit(fan_of_fans, 4, 6, 50, "failover")
    many = asyncio.ensure_future(client.call_all([(add, i, 31) for i in range(3000)]))
    await wait_until(lambda: any_running(redis_cluster_url), what="work running")
    promoted = await asyncio.to_thread(redis_cluster.fail_over, primary)
    assert promoted is not primary
    assert await asyncio.wait_for(job, 120) == 4 * sum(range(6))
    assert await asyncio.wait_for(many, 120) == [i + 31 for i in range(3000)]
    assert "request failed" not in grid_processes.log_text()


async def test_writes_lost_with_a_primary_are_recovered(
    client: girder.Grid,
    redis_cluster: RedisClusterServers,
    redis_cluster_url: str,
    grid_processes: GridProcesses,
) -> None:
    """The primary acknowledges writes its replica never gets (asynchronous replication),
    then dies: the promoted replica is an older copy of the grid. The nodes see the grid's
    clock go back, give back what they do not run, submit again what they wait for: the job
    finishes with the right answer, and no key is left running."""
    primary = redis_cluster.owner(redis_cluster.keyslot(ANCHOR))
    job = client.submit(fan_of_fans, 3, 8, 300, "lost-writes")
    await wait_until(lambda: any_running(redis_cluster_url), what="leaves running")
    await asyncio.to_thread(redis_cluster.stall_replication, primary)
    await wait_until(
        lambda: cached_at_least(redis_cluster_url, 6), what="leaves finished, unreplicated"
    )
    await asyncio.to_thread(redis_cluster.fail_over, primary)
    assert await asyncio.wait_for(job, 120) == 3 * sum(range(8))

    async def clock_went_back() -> bool:
        return "clock_went_back=True" in grid_processes.log_text()

    await wait_until(clock_went_back, what="a node to see the clock go back")
    await wait_until(lambda: nothing_runs(redis_cluster_url), what="no key left running")


SPREADING_ENV = {
    "GIRDER_LARGE_VALUE_BYTES": "1024",
    "GIRDER_SPREAD_RESULTS": "1",
    "GIRDER_SPREAD_NOTIFICATIONS": "1",
}
"""Every way a grid's state leaves its own slot, at once: values stored as blobs (spread over
every primary by digest), cached results moved to their keys' own slots (the calls' values are
blobs, which stay in the grid's slot; the job's small results move), and each node's
notifications in its own slot (the workers' nested calls wait there, and so does the client).
One run, not three: each run costs CI about 25 s."""
SPREADING_OPTIONS = {
    "large_value_bytes": 1024,
    "spread_results": True,
    "spread_notifications": True,
}


def moved_results(redis_cluster: RedisClusterServers) -> int:
    """How many cached results moved to their keys' slots, on every primary."""
    found = 0
    for primary in redis_cluster.primaries():
        with redis.Redis(host="127.0.0.1", port=primary.port) as db:
            found += sum(1 for _ in db.scan_iter(match="{girder:*}:v", count=1000))
    return found


def own_inbox_used(redis_cluster: RedisClusterServers, node: str) -> bool:
    """Whether node's notifications went to its own slot: the post tokens beside its inbox
    (they outlive the posts that the node took, until it leaves)."""
    posted = "{girder:node:" + node + "}:posted"
    owner = redis_cluster.owner(redis_cluster.keyslot(posted))
    with redis.Redis(host="127.0.0.1", port=owner.port) as db:
        return bool(db.exists(posted))


async def test_every_primary_failing_in_turn_while_state_spreads(
    redis_cluster: RedisClusterServers, redis_cluster_url: str, tmp_path: Path
) -> None:
    """Values and arguments stored as blobs, cached results moved to their own slots and
    notifications in their nodes' own slots, while each primary in turn is killed with SIGKILL
    and replaced by its replica, then comes back as a replica: the grid's own slot and the
    others all fail over mid-work (lookups, moves and posts too), and every call returns its
    own value (each value is asked for twice, the second time cached)."""
    procs = GridProcesses(redis_cluster_url, tmp_path, GIRDER_IO_CONCURRENCY="0", **SPREADING_ENV)
    try:
        procs.distributor()
        procs.worker("w1")
        procs.worker("w2")
        await wait_for_nodes(redis_cluster_url, workers=2)
        options = CLIENT_OPTIONS | SPREADING_OPTIONS
        async with girder.Grid.connect(redis_cluster_url, pool="pool", **options) as client:
            failing = asyncio.Event()
            checked = 0

            async def calls() -> None:
                nonlocal checked
                batch = 0
                while not failing.is_set() or batch < 3:
                    values = [f"{batch // 2}-{i}-".encode() * 400 for i in range(40)]
                    got = await client.call_all([(identity, value) for value in values])
                    assert got == values
                    checked += len(values)
                    batch += 1

            job = client.submit(fan_of_fans, 3, 6, 200, "every-primary")
            calling = asyncio.ensure_future(calls())
            for primary in list(redis_cluster.primaries()):
                await asyncio.to_thread(redis_cluster.fail_over, primary)
                await asyncio.to_thread(redis_cluster.heal)
            failing.set()
            await asyncio.wait_for(calling, 120)
            assert await asyncio.wait_for(job, 120) == 3 * sum(range(6))
            # The client was told its results in its own slot (since the last failover).
            assert own_inbox_used(redis_cluster, client.client.id)
        assert checked >= 120
        assert "request failed" not in procs.log_text()
        assert moved_results(redis_cluster) > 0
    finally:
        procs.stop_all()


async def test_the_grids_slot_moved_under_load_loses_and_hangs_nothing(
    client: girder.Grid,
    redis_cluster: RedisClusterServers,
    redis_cluster_url: str,
    grid_processes: GridProcesses,
) -> None:
    """A resharding moves the grid's slot to another primary while a job and 3,000 calls run:
    scripts wait for its end instead of running on the source (where they would stop at the
    first key already moved, their earlier writes made), commands for keys already
    moved wait for the end of the migration (never writing on the target, which would make the
    migration fail with BUSYKEY), and every request finishes soon after."""
    slot = redis_cluster.keyslot(ANCHOR)
    target = next(s for s in redis_cluster.primaries() if s is not redis_cluster.owner(slot))
    job = client.submit(fan_of_fans, 4, 6, 100, "moved")
    many = asyncio.ensure_future(client.call_all([(add, i, 53) for i in range(3000)]))
    await wait_until(lambda: any_running(redis_cluster_url), what="work running")
    moved = await asyncio.to_thread(redis_cluster.move_slot, slot, target, 5, 0.01)
    assert moved > 100
    assert redis_cluster.owner(slot) is target
    # Within a few retry intervals, not the minute a waiter's resubmission may take.
    assert await asyncio.wait_for(job, 30) == 4 * sum(range(6))
    assert await asyncio.wait_for(many, 30) == [i + 53 for i in range(3000)]
    assert "request failed" not in grid_processes.log_text()
