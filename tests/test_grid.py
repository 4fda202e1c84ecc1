"""The public API on the embedded grid: call, call_all, submit, direct calls, running loops."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from gridfns import (
    add,
    calls,
    chain,
    fib,
    slow_square,
    then_nap,
    times_out,
    tree,
    uncached_square,
    where,
)
from processes import wait_until

import girder
from girder.backends.base import Completion, RequestState
from girder.scheduler.worker import Worker


async def test_call_call_all_and_submit() -> None:
    async with girder.Grid.local(workers=4) as grid:
        assert await grid.call(fib, 90) == 2880067194370816120
        assert await grid.call_all([(add, 1, 2), (add, 3, 4)]) == [3, 7]
        assert await grid.call_all([girder.Request(add, 5, b=6)]) == [11]
        handle = grid.submit(fib, 50)
        assert isinstance(handle, girder.Handle)
        assert await handle == 12586269025
        assert handle.done()


async def test_decorated_functions_still_call_directly() -> None:
    assert add(2, 3) == 5
    assert await fib(20) == 6765  # outside a grid, call_reentrant just calls the functions


async def test_fib_2000_on_one_worker_computes_each_key_once() -> None:
    calls.clear()
    async with girder.Grid.local(workers=1) as grid:
        value = await grid.call(fib, 2000)
    a, b = 0, 1
    for _ in range(2000):
        a, b = b, a + b
    assert value == a
    fib_calls = {n: count for (name, n), count in calls.items() if name == "fib"}
    assert set(fib_calls) == set(range(2001))
    assert set(fib_calls.values()) == {1}


async def test_chain_5000_on_one_worker() -> None:
    async with girder.Grid.local(workers=1) as grid:
        assert await grid.call(chain, 5000) == 5000


async def test_identical_concurrent_requests_run_once_and_repeat_is_cached() -> None:
    calls.clear()
    async with girder.Grid.local(workers=4) as grid:
        values = await asyncio.gather(*(grid.call(slow_square, 7) for _ in range(50)))
        assert values == [49] * 50
        assert calls["slow_square", 7] == 1
        hits_before = grid.client.stats.cache_hits
        assert await grid.call(slow_square, 7) == 49
        assert calls["slow_square", 7] == 1
        assert grid.client.stats.cache_hits == hits_before + 1


async def test_cache_false_shares_in_flight_but_recomputes_later() -> None:
    calls.clear()
    async with girder.Grid.local(workers=2) as grid:
        values = await asyncio.gather(*(grid.call(uncached_square, 3) for _ in range(10)))
        assert values == [9] * 10
        assert calls["uncached_square", 3] == 1
        assert await grid.call(uncached_square, 3) == 9
        assert calls["uncached_square", 3] == 2


async def test_work_is_shared_between_workers() -> None:
    async with girder.Grid.local(workers=2, steal_period=0.01) as grid:
        assert await grid.call(tree, 12, 0) == 8191
        ran = [worker.stats.ran for worker in grid.workers]
        assert sum(ran) == 8191
        assert all(count > 0 for count in ran), ran
        assert grid.distributor is not None
        assert grid.distributor.stats.stolen > 0


async def test_current_node_names_the_worker() -> None:
    async with girder.Grid.local(workers=2) as grid:
        node = await grid.call(where, "x")
        assert node in {worker.id for worker in grid.workers}
    assert girder.current_node() is None


def test_grid_local_inside_a_loop_that_is_already_running() -> None:
    """As in Jupyter: the loop runs (here in another thread) before the grid is made."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        async def use_grid() -> int:
            async with girder.Grid.local(workers=2) as grid:
                result: int = await grid.call(fib, 30)
                return result

        future = asyncio.run_coroutine_threadsafe(use_grid(), loop)
        assert future.result(timeout=30) == 832040
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


@pytest.mark.parametrize("workers", [1, 3])
async def test_many_top_level_requests_at_once(workers: int) -> None:
    async with girder.Grid.local(workers=workers) as grid:
        values = await grid.call_all([(add, i, i) for i in range(500)])
        assert values == [2 * i for i in range(500)]


async def test_asyncio_timeout_inside_a_grid_function_is_its_own() -> None:
    async with girder.Grid.local(workers=1) as grid:
        assert await asyncio.wait_for(grid.call(times_out, 1), 10) == "timed out"
        assert await asyncio.wait_for(grid.call(add, 1, 2), 10) == 3  # the worker lives on


async def test_a_grid_stops_while_a_request_still_runs() -> None:
    grid = girder.Grid.local(workers=1)
    await grid.start()
    running = grid.submit(then_nap, 1, 2, 60_000)
    child_key = girder.Request(add, 1, 2).key

    async def napping() -> bool:
        return await grid.backend.state(child_key) == RequestState.DONE

    await wait_until(napping, 5, "the parent's nap")
    await asyncio.wait_for(grid.stop(), 5)  # it hung with asyncio.wait_for in the backend
    assert running.done()  # cancelled


@pytest.mark.parametrize(("function", "args", "value"), [(add, (20, 22), 42), (fib, (12,), 144)])
async def test_a_run_whose_completion_cannot_be_made_is_given_back_and_run_again(
    monkeypatch: pytest.MonkeyPatch,
    function: girder.GridFunction[..., object],
    args: tuple[int, ...],
    value: int,
) -> None:
    """Making a run's completion fails once (a bug, or the backend unreachable past the outage
    timeout): the worker gives the key back and it runs again, instead of staying claimed by a
    live worker and run by nobody (sync and async functions conclude on different paths)."""
    failed: list[str] = []
    original = Worker.completion

    def failing_once(self: Worker, key: str, *rest: Any, **options: Any) -> Completion:
        if not failed:
            failed.append(key)
            raise RuntimeError("the completion could not be made")
        return original(self, key, *rest, **options)

    monkeypatch.setattr(Worker, "completion", failing_once)
    async with girder.Grid.local(workers=1) as grid:
        assert await asyncio.wait_for(grid.call(function, *args), 30) == value
        assert failed
        assert await grid.backend.state(failed[0]) == RequestState.DONE
