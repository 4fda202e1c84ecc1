"""The host's event loop stays responsive under `Grid.local`: slow sync grid functions run in a
thread (one at a time per process), quick ones inline on the loop, as learned per function."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from gridfns import sync_marked_sleep, sync_over_limit, sync_sleep, which_thread
from processes import wait_until

import girder

pytestmark = pytest.mark.timeout(90)


async def _worst_stall_while(work: asyncio.Future[object]) -> float:
    """The longest the loop was held by something else (a 1 ms sleep woke that late) until
    `work` is done."""
    worst = 0.0
    while not work.done():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - before - 0.001)
    return worst


async def test_slow_sync_functions_do_not_stall_the_host_loop() -> None:
    """Sync requests of 500 ms each, on four workers: on the loop each would stall it 500 ms; in
    a thread the loop waits far less. Bounded loosely (half a request): on a loaded machine a
    loop with nothing to do stalls tens of milliseconds too, and more with threads about;
    `benchmarks/loop_stall.py` measures it."""
    async with girder.Grid.local(workers=4) as grid:
        work = asyncio.ensure_future(grid.call_all([(sync_sleep, 500, i) for i in range(4)]))
        worst = await _worst_stall_while(work)
        assert await work == list(range(4))
    assert worst < 0.25, f"the host loop stalled {1000 * worst:.0f} ms"


async def test_quick_sync_functions_run_inline_once_measured_and_slow_ones_in_a_thread() -> None:
    main = threading.current_thread().name
    async with girder.Grid.local(workers=1) as grid:
        first = await grid.call(which_thread, 1)  # not measured yet: in the worker's thread
        assert first[1] != main
        later = await grid.call_all([(which_thread, i) for i in range(2, 6)])
        assert all(thread == main for _, thread, _ in later)  # measured quick: on the loop
        assert {node for _, _, node in [first, *later]} == {grid.workers[0].id}


async def test_stopping_a_grid_does_not_wait_for_a_sync_function_in_its_thread(
    marks: Path,
) -> None:
    """Nothing interrupts a sync function; the grid stops without it (its value is dropped)."""
    grid = girder.Grid.local(workers=1)
    async with grid:
        grid.submit(sync_marked_sleep, 2000, str(marks))

        async def started() -> bool:
            return (marks / "started").exists()

        await wait_until(started, what="the sync function to start")
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 1.5


async def test_waiting_for_the_thread_does_not_count_against_a_time_limit(marks: Path) -> None:
    """Sync functions run in threads one at a time per process: a request with a 0.2 s limit
    that waits its turn behind a 0.8 s one is timed from its own start."""
    async with girder.Grid.local(workers=2) as grid:
        slow = grid.submit(sync_marked_sleep, 800, str(marks))

        async def started() -> bool:
            return (marks / "started").exists()

        await wait_until(started, what="the slow sync function to start")
        assert await grid.call(sync_over_limit, 10) == 10
        assert await slow == "slept"
