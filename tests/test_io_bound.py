"""Async grid functions that wait on I/O wait together: their batons are lent to the next
requests (up to `io_concurrency` per worker), while what computes still runs one per baton."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from gridfns import nap, sleepy_tree, then_nap
from processes import GridProcesses, wait_for_nodes
from routingfns import (
    counted,
    gather_two,
    leaves_a_flow_behind,
    left_behind,
    most_at_once,
    task_group,
)
from test_cancel import OPTIONS, _every_started_leaf_stops, _marks, _wait_marks

import girder

pytestmark = pytest.mark.timeout(90)


def _baton_is_whole(grid: girder.Grid, permits: int = 1) -> None:
    """Every worker has its `permits` batons back, and no more."""
    for worker in grid.workers:
        for _ in range(permits):
            assert worker.baton.try_acquire_for_work()
        assert not worker.baton.try_acquire_for_work()
        for _ in range(permits):
            worker.baton.release()


async def test_two_hundred_io_bound_requests_wait_together_with_the_defaults() -> None:
    """200 requests that each await 50 ms: one after the other per baton they took 2.5 s on
    four workers; with lent batons they take about one wait (loosely bounded here)."""
    async with girder.Grid.local(workers=4) as grid:
        started = time.perf_counter()
        values = await grid.call_all([(nap, 50, index) for index in range(200)])
        elapsed = time.perf_counter() - started
        assert values == list(range(200))
        assert elapsed < 1.5, f"200 I/O-bound requests took {elapsed:.2f} s"
        _baton_is_whole(grid)


async def test_loans_are_capped_by_io_concurrency_and_all_come_back() -> None:
    """One baton and three loans: at most four requests wait at once, twice over."""
    async with girder.Grid.local(workers=1, concurrency=1, io_concurrency=3) as grid:
        await grid.call(most_at_once)
        for tag in ("a", "b"):
            values = await grid.call_all([(counted, tag, index) for index in range(12)])
            assert values == [f"{tag}{index}" for index in range(12)]
            assert await grid.call(most_at_once) == 4
        _baton_is_whole(grid)


async def test_without_loans_an_await_keeps_its_baton() -> None:
    async with girder.Grid.local(workers=1, concurrency=1, io_concurrency=0) as grid:
        await grid.call(most_at_once)
        await grid.call_all([(counted, "c", index) for index in range(3)])
        assert await grid.call(most_at_once) == 1


async def test_a_request_that_waits_on_io_then_parks_then_waits_again() -> None:
    """A lent request that parks in `call_reentrant` takes a baton back (ending its loan), and
    lends it again at its next wait."""
    async with girder.Grid.local(workers=1, concurrency=1, io_concurrency=2) as grid:
        values = await grid.call_all([(then_nap, index, 1, 100) for index in range(6)])
        assert values == [index + 1 for index in range(6)]
        _baton_is_whole(grid)


async def test_cancelling_requests_that_wait_on_io_loses_no_baton_and_no_loan(
    marks: Path,
) -> None:
    """Every leaf of the tree waits on I/O at once (64 loans); cancelling the job stops them all,
    and the worker has its baton and its loans back."""
    async with girder.Grid.local(workers=1, concurrency=1, io_concurrency=80) as grid:
        handle = grid.submit(sleepy_tree, 3, 4, 0, str(marks))
        await _wait_marks(marks, "start-", 64)
        assert handle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handle
        await _every_started_leaf_stops(marks)
        assert len(_marks(marks, "start-")) == 64
        _baton_is_whole(grid)
        await grid.call(most_at_once)
        await grid.call_all([(counted, "d", index) for index in range(100)])
        assert await grid.call(most_at_once) == 81  # one baton and 80 loans: none was lost


async def test_flows_of_a_request_that_lends_its_baton_lose_no_baton_and_no_loan() -> None:
    """A request awaiting `gather` of two `call_reentrant`s suspends while its flows have not
    parked yet: it lends its baton; a flow that resumes takes a baton back and ends the loan."""
    async with girder.Grid.local(workers=1, concurrency=1, io_concurrency=5) as grid:
        assert await grid.call(gather_two, "g") == ["g0", "g1", "g2", "g3"]
        assert await grid.call(task_group, "t", 3) == ["t0t+0", "t1t+1", "t2t+2"]
        assert await grid.call(leaves_a_flow_behind, "x") == "x"
        await asyncio.wait_for(asyncio.gather(*left_behind), 30)
        _baton_is_whole(grid)
        await grid.call(most_at_once)
        await grid.call_all([(counted, "e", index) for index in range(20)])
        assert await grid.call(most_at_once) == 6  # one baton and five loans


@pytest.mark.redis
async def test_a_worker_process_runs_io_bound_requests_together(
    redis_url: str, tmp_path: Path
) -> None:
    """One `girder worker` process, one baton: 40 requests of 200 ms each finish in far less
    than the 8 s they would take one at a time."""
    procs = GridProcesses(redis_url, tmp_path)
    try:
        procs.distributor()
        procs.worker("w1", "pool", "--concurrency", "1")
        await wait_for_nodes(redis_url, workers=1)
        async with girder.Grid.connect(redis_url, **OPTIONS) as client:
            started = time.perf_counter()
            values = await client.call_all([(nap, 200, 1000 + index) for index in range(40)])
            elapsed = time.perf_counter() - started
        assert values == [1000 + index for index in range(40)]
        assert elapsed < 4.0, f"40 I/O-bound requests took {elapsed:.2f} s"
    finally:
        procs.stop_all()
