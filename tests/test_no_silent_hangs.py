"""Mistakes fail with a clear error instead of waiting forever: a stopped grid, a memory backend
given to processes that cannot share it, a pool nobody serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from gridfns import add
from processes import CLIENT_OPTIONS

import girder


def _girder(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "GIRDER_BACKEND"}
    return subprocess.run(
        [sys.executable, "-m", "girder", *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_grid_that_has_not_started_raises_at_once() -> None:
    grid = girder.Grid.local(workers=1)
    with pytest.raises(girder.GridStopped, match="has not started"):
        await grid.call(add, 1, 2)
    with pytest.raises(girder.GridStopped):
        grid.submit(add, 1, 2)


async def test_a_stopped_grid_raises_at_once() -> None:
    async with girder.Grid.local(workers=1) as grid:
        assert await grid.call(add, 1, 2) == 3
    for attempt in (
        lambda: grid.call(add, 1, 2),
        lambda: grid.call_all([(add, 1, 2)]),
        lambda: grid.cancel("job"),
    ):
        with pytest.raises(girder.GridStopped, match=r"has stopped.*async with"):
            await attempt()
    with pytest.raises(girder.GridStopped):
        grid.submit(add, 1, 2)
    with pytest.raises(girder.GridStopped):
        grid.stream(add, 1, 2)


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["worker", "--backend", "memory://"], {}),
        (["distributor"], {"GIRDER_BACKEND": "memory://"}),
        (["up", "--backend", "memory://", "--workers", "1"], {}),
    ],
)
def test_processes_refuse_the_memory_backend(command: list[str], env: dict[str, str]) -> None:
    done = _girder(*command, **env)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"girder {command[0]}: the backend memory://")
    assert "no other process" in line
    assert "--backend redis://" in line


@girder.function
async def asks_pool(pool: str, n: int) -> int:
    """A grid function whose sub-request goes to `pool`."""
    (value,) = await girder.call_reentrant([girder.Request(add, n, 1, pool=pool)])
    return int(value)


async def test_a_request_to_a_pool_nobody_serves_fails_naming_the_pools() -> None:
    async with girder.Grid.local(workers=1, pool_wait=0.5) as grid:
        started = asyncio.get_running_loop().time()
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(grid.call(girder.Request(add, 1, 2, pool="pol")), 30)
        assert asyncio.get_running_loop().time() - started >= 0.5
        assert caught.value.kind == "pool"
        assert "no distributor serves the pool 'pol'" in str(caught.value)
        assert "the pools that exist: 'pool'" in str(caught.value)
        assert "GIRDER_POOL_WAIT" in str(caught.value)
        # The grid goes on, and so does a sub-request routed to a pool nobody serves.
        assert await grid.call(add, 1, 2) == 3
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(grid.call(asks_pool, "pol", 5), 30)
        assert caught.value.kind == "pool"
        assert "no distributor serves the pool 'pol'" in str(caught.value)


@pytest.mark.redis
async def test_a_client_of_a_pool_nobody_serves_fails(redis_url: str) -> None:
    async with (
        girder.Grid.local(workers=1, backend=redis_url, **CLIENT_OPTIONS),
        girder.Grid.connect(redis_url, pool="typo", pool_wait=1, **CLIENT_OPTIONS) as client,
    ):
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(client.call(add, 1, 2), 30)
        assert caught.value.kind == "pool"
        assert "'typo'" in str(caught.value)
        assert "the pools that exist: 'pool'" in str(caught.value)


@pytest.mark.redis
async def test_a_pool_whose_distributor_comes_within_the_wait_fails_nothing(
    redis_url: str,
) -> None:
    """A distributor that (re)starts within `pool_wait` serves what waited for it."""
    async with girder.Grid.connect(
        redis_url, pool="late", pool_wait=60, **CLIENT_OPTIONS
    ) as client:
        handle = client.submit(add, 2, 3)
        await asyncio.sleep(1.0)  # the client has looked, and found no distributor yet
        assert not handle.done()
        async with girder.Grid.local(workers=1, backend=redis_url, pool="late", **CLIENT_OPTIONS):
            assert await asyncio.wait_for(handle, 30) == 5
