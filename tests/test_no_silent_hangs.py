"""Mistakes fail with a clear error instead of waiting forever: a stopped grid, a memory backend
given to processes that cannot share it, a pool nobody serves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from gridfns import add, divide, nap
from processes import CLIENT_OPTIONS, grid_on, wait_until

import girder
from girder.backends import open_backend
from girder.backends.base import RequestState


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


async def test_a_pool_served_in_this_process_is_served_whatever_the_membership_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The membership records of a grid may vanish for a while (evicted under an `allkeys-*`
    policy, lost in a restart): a distributor in this very process still serves its pool, so
    nothing fails as unserved. The typo check still sees through that."""
    async with girder.Grid.local(workers=1, pool_wait=0.3) as grid:

        async def no_members() -> list[Any]:
            return []

        monkeypatch.setattr(grid.backend, "nodes", no_members)
        assert await asyncio.wait_for(grid.call(nap, 1000, 7), 30) == 7  # past pool_wait
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(grid.call(girder.Request(add, 1, 2, pool="pol")), 30)
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


# -- girder status ---------------------------------------------------------------------------------


async def _girder_output(*args: str) -> str:
    """What a real `girder` process prints (without blocking this loop: the clients beat)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "girder",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.redis
async def test_status_shows_counters_and_work_nobody_serves(redis_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().int % 1_000_000
    async with grid_on(redis_url, tmp_path / "logs", workers=1) as (client, _):
        first = client.submit(nap, 400, tag)
        backend = open_backend(redis_url)
        await backend.connect()
        try:
            key = girder.Request(nap, 400, tag).key

            async def running() -> bool:
                return await backend.state(key) == RequestState.RUNNING

            await wait_until(running, what="the first request to run")
        finally:
            await backend.close()
        second = client.submit(nap, 400, tag)  # joins the run in flight
        assert await first == await second == tag
        assert await client.call(nap, 400, tag) == tag  # from the cache
        with pytest.raises(girder.RequestError):
            await client.call(divide, 1, 0)
        async with girder.Grid.connect(
            redis_url, pool="typo", pool_wait=120, **CLIENT_OPTIONS
        ) as typo:
            queued = typo.submit(add, 1, tag)
            found: dict[str, Any] = {}

            async def shown() -> bool:
                found.update(
                    json.loads(await _girder_output("status", "--json", "--backend", redis_url))
                )
                nodes = {n["node"]: n for n in found["nodes"]}
                me = nodes.get(client.client.id, {})
                return (
                    found["unserved"] == {"typo": 1}
                    and nodes["w1"]["ran"] >= 2
                    and nodes["w1"]["failed"] >= 1
                    and me.get("cache_hits", 0) >= 1
                    and me.get("shared", 0) >= 1
                    and me.get("lost") == 0  # nothing was lost
                )

            await wait_until(shown, timeout=60, what="the counters and the queue in 'typo'")
            table = (await _girder_output("status", "--backend", redis_url)).splitlines()
            queued.cancel()
        assert table[1].split()[-2:] == ["shared", "lost"]
        assert any(line.startswith("w1 ") for line in table)
        assert "queued in 'typo', which no live node serves: 1" in table


@pytest.mark.redis
def test_status_watch_refreshes_until_interrupted(redis_url: str) -> None:
    command = [sys.executable, "-m", "girder", "status", "--watch", "0.2", "--backend", redis_url]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            refreshes = 0
            while refreshes < 3:
                line = proc.stdout.readline()
                assert line, "girder status --watch ended by itself"
                refreshes += line.startswith("-- ")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_a_call_under_way_when_the_grid_stops_fails() -> None:
    async with girder.Grid.local(workers=1) as grid:
        call = asyncio.create_task(grid.call(nap, 60_000, uuid.uuid4().int % 1_000_000))
        await wait_until(lambda: _started(grid), what="the long call to start")
    with pytest.raises(girder.RequestError, match="the grid stopped") as caught:
        await asyncio.wait_for(call, 30)
    assert caught.value.kind == "stopped"


async def _started(grid: girder.Grid) -> bool:
    return any(worker.running_keys() for worker in grid.workers)


async def test_a_client_of_an_empty_memory_backend_is_told_to_use_a_local_grid() -> None:
    async with girder.Grid.connect(pool_wait=0.2) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(grid.call(add, 1, 2), 30)
    assert "the pools that exist: none" in str(caught.value)
    assert "Grid.local" in str(caught.value)
