"""Several flows of one evaluation share its one baton; routed sub-requests run in their pool.
On the embedded grid and on Redis with worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from processes import FAST_RECOVERY, GridProcesses, wait_for_nodes, wait_until
from routingfns import (
    gather_sleepers,
    gather_two,
    leaves_a_flow_behind,
    most_at_once,
    named_pool,
    needs_itself_in,
    route_to,
    task_group,
    waits_for,
    where,
)

import girder
from girder.config import load_settings

OPTIONS: dict[str, Any] = {
    key.removeprefix("GIRDER_").lower(): float(value) for key, value in FAST_RECOVERY.items()
}

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["memory", "redis"])
async def one_baton(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[girder.Grid]:
    """A grid of one worker with one baton: in this process, or one worker process on Redis.
    No baton is lent to requests that wait on I/O, so that `counted` counts baton holders."""
    if request.param == "memory":
        async with girder.Grid.local(workers=1, concurrency=1, io_concurrency=0) as local:
            yield local
            assert local.workers[0].baton.try_acquire_for_work()  # no baton was lost
            assert not local.workers[0].baton.try_acquire_for_work()  # and none was made
            local.workers[0].baton.release()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    (tmp_path / "logs").mkdir()
    procs = GridProcesses(redis_url, tmp_path / "logs", GIRDER_IO_CONCURRENCY="0")
    try:
        procs.distributor()
        procs.worker("w1", "pool", "--import", "routingfns", "--concurrency", "1")
        await wait_for_nodes(redis_url, workers=1)
        async with girder.Grid.connect(redis_url, **OPTIONS) as client:
            yield client
    finally:
        procs.stop_all()


async def test_gathered_reentrant_calls_run_one_user_function_per_baton(
    one_baton: girder.Grid,
) -> None:
    await one_baton.call(most_at_once)
    assert await one_baton.call(gather_two, "a") == ["a0", "a1", "a2", "a3"]
    assert await one_baton.call(most_at_once) == 1
    # Again, and two such requests at once: the baton came back whole.
    assert await one_baton.call_all([(gather_two, "b"), (gather_two, "c")]) == [
        ["b0", "b1", "b2", "b3"],
        ["c0", "c1", "c2", "c3"],
    ]
    assert await one_baton.call(most_at_once) == 1


async def test_flows_of_a_task_group_park_and_resume_in_any_order(one_baton: girder.Grid) -> None:
    await one_baton.call(most_at_once)
    assert await one_baton.call(task_group, "t", 3) == ["t0t+0", "t1t+1", "t2t+2"]
    assert await one_baton.call(most_at_once) == 1


async def test_a_flow_left_behind_keeps_no_baton(one_baton: girder.Grid) -> None:
    assert await one_baton.call(leaves_a_flow_behind, "x") == "x"
    # The flow resumes after its request finished; the worker still has its one baton.
    after = await asyncio.wait_for(one_baton.call(gather_two, "y"), 30)  # no baton was lost
    assert after == ["y0", "y1", "y2", "y3"]
    assert await one_baton.call(most_at_once) == 1


async def test_cancelling_a_request_with_two_parked_flows_loses_no_baton(
    one_baton: girder.Grid, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    handle = one_baton.submit(gather_sleepers, str(marks))

    async def started() -> bool:
        return any(marks.glob("start-*"))

    await wait_until(started, what="a sleeper to start")
    assert handle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle

    async def stopped() -> bool:
        return {p.name[5:] for p in marks.glob("stop-*")} == {
            p.name[6:] for p in marks.glob("start-*")
        }

    await wait_until(stopped, what="the started sleeper to stop")
    assert len(list(marks.glob("start-*"))) == 1  # one baton: the other never started
    after = await asyncio.wait_for(one_baton.call(gather_two, "z"), 30)
    assert after == ["z0", "z1", "z2", "z3"]
    assert await one_baton.call(most_at_once) == 1


async def test_two_batons_two_flows(tmp_path: Path) -> None:
    """With two batons, an evaluation with two parked flows still holds at most one."""
    async with girder.Grid.local(workers=1, concurrency=2, io_concurrency=0) as grid:
        await grid.call(most_at_once)
        assert await grid.call(gather_two, "k") == ["k0", "k1", "k2", "k3"]
        assert await grid.call(most_at_once) == 2
        baton = grid.workers[0].baton
        assert baton.try_acquire_for_work()
        assert baton.try_acquire_for_work()
        assert not baton.try_acquire_for_work()
        baton.release()
        baton.release()


# -- routed requests ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def two_pools(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[girder.Grid]:
    """Pools `a` (workers a1, a2) and `b` (worker b1), and a client of pool `a`.

    On memory, two `Grid`s on one backend object: each hosts one pool (`Grid.local` hosts one)."""
    if request.param == "memory":
        pool_a = girder.Grid(load_settings(pool="a", workers=2), local_workers=2)
        pool_b = girder.Grid(
            load_settings(pool="b", workers=1), local_workers=1, backend=pool_a.backend
        )
        async with pool_b, pool_a:
            yield pool_a
        return
    redis_url: str = request.getfixturevalue("redis_url")
    (tmp_path / "logs").mkdir()
    procs = GridProcesses(redis_url, tmp_path / "logs")
    try:
        procs.distributor("a")
        procs.distributor("b")
        for name, pool in [("a-w1", "a"), ("a-w2", "a"), ("b-w1", "b")]:
            procs.worker(name, pool, "--import", "routingfns")
        await wait_for_nodes(redis_url, workers=3, distributors=2)
        async with girder.Grid.connect(redis_url, pool="a", **OPTIONS) as client:
            yield client
    finally:
        procs.stop_all()


POOL_A = {"a-w1", "a-w2"}


async def test_a_routed_sub_request_runs_only_in_its_pool(two_pools: girder.Grid) -> None:
    answers = await two_pools.call_all([(route_to, "b", 10 * n) for n in range(6)])
    for n, answer in enumerate(answers):
        assert answer["self"] in POOL_A
        assert answer["routed"] == (10 * n, "b-w1")
        assert answer["local"][0] == 10 * n + 1
        assert answer["local"][1] in POOL_A


async def test_a_client_routes_top_level_requests(two_pools: girder.Grid) -> None:
    assert await two_pools.call(girder.Request(where, 1, pool="b")) == (1, "b-w1")
    assert await two_pools.submit(girder.Request(where, 2, pool="b")) == (2, "b-w1")
    mixed = await two_pools.call_all([girder.Request(where, 3, pool="b"), (where, 4)])
    assert mixed[0] == (3, "b-w1")
    assert mixed[1][1] in POOL_A


async def test_the_pool_is_not_part_of_the_key(two_pools: girder.Grid) -> None:
    routed = girder.Request(where, 5, pool="b")
    assert routed.key == girder.Request(where, 5).key == girder.Request(where, 5).to("b").key
    assert await two_pools.call(routed) == (5, "b-w1")
    assert await two_pools.call(where, 5) == (5, "b-w1")  # a result is a result: cached


async def test_pool_is_reserved_by_request_only() -> None:
    routed = girder.Request(named_pool, pool="b")
    assert routed.pool == "b"
    assert routed.kwargs == {}
    assert girder.Request(named_pool, "mine").to("b").pool == "b"
    async with girder.Grid.local(workers=1) as grid:
        # `grid.call` gives every keyword argument to the function, `pool` too.
        assert await grid.call(named_pool, pool="mine") == "mine"
        assert await grid.call(girder.Request(named_pool, "mine")) == "mine"
        # `to` keeps the function's own `pool` argument (from `grid.submit`'s request).
        handle = grid.submit(named_pool, pool="its own")
        assert handle.request.to(None).kwargs == {"pool": "its own"}
        assert await grid.call(handle.request.to(None)) == "its own"
        assert await handle == "its own"
        with pytest.raises(TypeError, match="takes its arguments itself"):
            await grid.call(girder.Request(named_pool), "mine")


async def test_a_cycle_across_pools_is_an_error(two_pools: girder.Grid) -> None:
    with pytest.raises(girder.RequestError, match="cycle"):
        await two_pools.call(needs_itself_in, "b")


async def test_cancelling_reaches_a_routed_sub_request(
    two_pools: girder.Grid, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    handle = two_pools.submit(waits_for, "b", str(marks))

    async def started() -> bool:
        return (marks / "start-b-w1").exists()

    async def stopped() -> bool:
        return (marks / "stop-b-w1").exists()

    await wait_until(started, what="the routed request to start in pool b")
    assert handle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle
    await wait_until(stopped, what="the routed request to stop")
