"""Cancelling a job: what stops, what goes on, and who hears of it; on the embedded grid and on
Redis with worker processes (and a second client process that cancels by job id)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gridfns import needs_shared, sleepy_tree
from processes import CLIENT_OPTIONS, GridProcesses, grid_on, wait_for_nodes, wait_until

import girder

OPTIONS = CLIENT_OPTIONS


def _marks(directory: Path, prefix: str) -> set[str]:
    return {path.name.removeprefix(prefix) for path in directory.glob(f"{prefix}*")}


async def _wait_marks(directory: Path, prefix: str, count: int) -> None:
    async def enough() -> bool:
        return len(_marks(directory, prefix)) >= count

    await wait_until(enough, timeout=30, what=f"{count} {prefix!r} marks")


async def _every_started_leaf_stops(directory: Path) -> None:
    """Every leaf and parent that started stops (counted from their own `finally` blocks)."""

    async def stopped() -> bool:
        return _marks(directory, "start-") == _marks(directory, "stop-") and _marks(
            directory, "pstart-"
        ) == _marks(directory, "pstop-")

    await wait_until(stopped, timeout=30, what="every started leaf and parent to stop")


@pytest.fixture
async def grid(
    backend_url: str | None, tmp_path: Path
) -> AsyncIterator[tuple[girder.Grid, GridProcesses | None]]:
    """A grid of two workers: in this process on memory, or worker processes on Redis. No baton
    is lent to a request that waits on I/O: each worker runs one request at a time, and the
    others wait in queues."""
    async with grid_on(backend_url, tmp_path / "logs", workers=2, io_concurrency=0) as found:
        yield found


pytestmark = pytest.mark.timeout(90)


async def test_cancelling_a_tree_stops_every_leaf_and_caches_nothing(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    handle = client.submit(sleepy_tree, 3, 4, 0, str(marks))  # 64 sleeping leaves
    await _wait_marks(marks, "start-", 2)
    assert handle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle
    await _every_started_leaf_stops(marks)
    assert _marks(marks, "pstop-")  # the parked parents got CancelledError too
    started = _marks(marks, "start-")
    assert len(started) < 64  # the queued leaves never started
    assert await client.backend.cache_size() == 0
    await asyncio.sleep(0.3)  # nothing else starts once the job is cancelled
    assert _marks(marks, "start-") == started


async def test_a_request_shared_with_another_job_keeps_running_for_it(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    first = client.submit(needs_shared, "A", "s", str(marks))
    second = client.submit(needs_shared, "B", "s", str(marks))
    await _wait_marks(marks, "shared-", 1)
    first.cancel()
    assert await asyncio.wait_for(second, 30) == "B: shared s"
    assert len(_marks(marks, "shared-")) == 1  # it ran once, for both
    with pytest.raises(asyncio.CancelledError):
        await first
    # The shared result was cached; asking for A again computes only what was cancelled.
    assert await client.call(needs_shared, "A", "s", str(marks)) == "A: shared s"
    assert len(_marks(marks, "shared-")) == 1


async def test_a_timeout_around_a_call_cancels_its_sub_requests(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await client.call(sleepy_tree, 2, 3, 0, str(marks))
    assert _marks(marks, "start-")
    await _every_started_leaf_stops(marks)
    assert await client.backend.cache_size() == 0


async def test_whoever_else_waits_gets_cancelled_naming_the_job(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    """The job is cancelled by job id (as another client would): its own awaiting caller was
    not cancelled, so it hears `girder.Cancelled` with the job that cancelled it."""
    client, _ = grid
    handle = client.submit(sleepy_tree, 1, 2, 0, str(marks))
    await _wait_marks(marks, "start-", 1)
    assert await client.cancel(handle.job) >= 1
    with pytest.raises(girder.Cancelled) as caught:
        await asyncio.wait_for(handle, 30)
    assert caught.value.kind == "cancelled"
    assert caught.value.job == handle.job
    await _every_started_leaf_stops(marks)


@pytest.mark.redis
async def test_a_second_client_process_cancels_by_job_id(
    redis_url: str, tmp_path: Path, marks: Path
) -> None:
    procs = GridProcesses(redis_url, tmp_path)
    try:
        procs.distributor()
        procs.worker("w1")
        procs.worker("w2")
        await wait_for_nodes(redis_url, workers=2)
        async with girder.Grid.connect(redis_url, **OPTIONS) as client:
            handle = client.submit(sleepy_tree, 2, 4, 0, str(marks))
            await _wait_marks(marks, "start-", 2)
            script = (
                "import asyncio, sys, girder\n"
                "async def main():\n"
                "    async with girder.Grid.connect(sys.argv[1]) as grid:\n"
                "        print(await grid.cancel(sys.argv[2]))\n"
                "asyncio.run(main())\n"
            )
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", script, redis_url, handle.job],
                env={**os.environ, **procs.env},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert int(done.stdout) == 0  # another client's job: its own client cancels it
            with pytest.raises(girder.Cancelled):
                await asyncio.wait_for(handle, 30)
            await _every_started_leaf_stops(marks)
            assert await client.backend.cache_size() == 0
    finally:
        procs.stop_all()
