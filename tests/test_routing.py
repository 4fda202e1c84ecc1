"""Several flows of one evaluation share its one baton; routed sub-requests run in their pool.
On the embedded grid and on Redis with worker processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from processes import FAST_RECOVERY, GridProcesses, wait_for_nodes
from routingfns import gather_two, most_at_once, task_group

import girder

OPTIONS: dict[str, Any] = {
    key.removeprefix("GIRDER_").lower(): float(value) for key, value in FAST_RECOVERY.items()
}

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["memory", "redis"])
async def one_baton(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[girder.Grid]:
    """A grid of one worker with one baton: in this process, or one worker process on Redis."""
    if request.param == "memory":
        async with girder.Grid.local(workers=1, concurrency=1) as local:
            yield local
            assert local.workers[0].baton.try_acquire_for_work()  # no baton was lost
            assert not local.workers[0].baton.try_acquire_for_work()  # and none was made
            local.workers[0].baton.release()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    (tmp_path / "logs").mkdir()
    procs = GridProcesses(redis_url, tmp_path / "logs")
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
