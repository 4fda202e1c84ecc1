"""Time limits: `@girder.function(timeout=...)` and `grid.call(..., timeout=...)`. An async
request past its limit is cancelled where it waits; a sync one costs its worker process (killed
and replaced by `girder worker`'s supervisor), never the grid."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gridfns import add, fan, limited_parent, sleepy_tree, stuck, sync_over_limit
from processes import GridProcesses, nodes, wait_for_nodes, wait_until
from test_cancel import OPTIONS, _every_started_leaf_stops, _marks, _wait_marks

import girder

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_an_async_request_past_its_limit_fails_and_lets_go_of_its_sub_requests(
    backend: str, marks: Path, request: pytest.FixtureRequest
) -> None:
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    async with girder.Grid.local(workers=2, backend=url, **OPTIONS) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(grid.call(limited_parent, str(marks)), 30)
        assert caught.value.kind == "timeout"
        assert "time limit of 0.5 s" in caught.value.message
        assert _marks(marks, "start-")
        await _every_started_leaf_stops(marks)
        assert await grid.backend.cache_size() == 0


async def test_a_call_timeout_fails_the_call_and_cancels_its_job(marks: Path) -> None:
    async with girder.Grid.local(workers=2) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(sleepy_tree, 1, 2, 0, str(marks), timeout=0.5)
        assert caught.value.kind == "timeout"
        await _every_started_leaf_stops(marks)
        assert await grid.call(add, 1, 2, timeout=5) == 3


async def test_a_sync_request_past_its_limit_in_process_loses_its_value() -> None:
    """In `Grid.local` nothing can stop a sync function: past its limit, its value is dropped
    and it fails with kind "timeout" when it returns."""
    async with girder.Grid.local(workers=1) as grid:
        assert await grid.call(sync_over_limit, 10) == 10
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(sync_over_limit, 400)
        assert caught.value.kind == "timeout"


@pytest.mark.redis
async def test_a_sync_request_past_its_limit_costs_its_worker_process_not_the_grid(
    redis_url: str, tmp_path: Path, marks: Path
) -> None:
    """An endless sync loop: its worker process is killed and replaced, the request fails with
    kind "timeout" (run once: not retried, not a crash), and the other requests of that process
    finish."""
    procs = GridProcesses(redis_url, tmp_path)
    try:
        procs.distributor()
        procs.worker("w1")
        await wait_for_nodes(redis_url, workers=1)
        async with girder.Grid.connect(redis_url, **OPTIONS) as client:
            stuck_job = client.submit(stuck, str(marks))
            await _wait_marks(marks, "stuck-", 1)
            others = client.submit(fan, 4, 50, "limits")
            with pytest.raises(girder.RequestError) as caught:
                await asyncio.wait_for(stuck_job, 60)
            assert caught.value.kind == "timeout"
            assert "killed and replaced" in caught.value.message
            assert await asyncio.wait_for(others, 60) == sum(range(4))
            assert len(_marks(marks, "stuck-")) == 1

            async def replaced() -> bool:
                return any(n.node == "w1" and n.alive for n in await nodes(redis_url))

            await wait_until(replaced, what="w1 started again")
            assert await client.call(add, 2, 2) == 4
    finally:
        procs.stop_all()
