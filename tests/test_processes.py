"""The distributed grid in real processes, started through the `girder` command, on Redis."""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from gridfns import add, chain, fan, fan_of_fans, fib, tree
from processes import FAST_RECOVERY, GridProcesses, any_running, nodes, wait_for_nodes, wait_until

import girder
from girder.backends.base import NodeKind
from girder.config import Settings

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

CLIENT_OPTIONS: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_ttl": 1.5,
    "reap_interval": 0.3,
    "idle_poll": 0.5,
}


@pytest.fixture
def grid_processes(redis_url: str, tmp_path: Path) -> Iterator[GridProcesses]:
    procs = GridProcesses(redis_url, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[girder.Grid]:
    async with girder.Grid.connect(redis_url, pool="pool", **CLIENT_OPTIONS) as grid:
        yield grid


async def _running_on(url: str, worker: str) -> bool:
    return any(n.node == worker and n.running > 0 for n in await nodes(url))


async def test_fib_500_and_tree_10_on_two_workers(
    grid_processes: GridProcesses, client: girder.Grid, redis_url: str
) -> None:
    grid_processes.distributor()
    grid_processes.worker("w1")
    grid_processes.worker("w2")
    await wait_for_nodes(redis_url, workers=2)
    value = await asyncio.wait_for(client.call(fib, 500), 60)
    a, b = 0, 1
    for _ in range(500):
        a, b = b, a + b
    assert value == a
    assert await asyncio.wait_for(client.call(tree, 10, 0), 60) == 2047
    assert await client.call_all([(add, i, 1) for i in range(100)]) == list(range(1, 101))


async def test_chain_2000_on_one_worker_process(
    grid_processes: GridProcesses, client: girder.Grid, redis_url: str
) -> None:
    grid_processes.distributor()
    grid_processes.worker("solo")
    await wait_for_nodes(redis_url, workers=1)
    assert await asyncio.wait_for(client.call(chain, 2000), 90) == 2000


async def test_kill_9_of_a_worker_mid_job_loses_nothing(
    grid_processes: GridProcesses, client: girder.Grid, redis_url: str
) -> None:
    # One request at a time per worker (no baton lent to naps): the job spreads over both
    # workers by stealing and lasts long enough to kill one of them mid-job.
    grid_processes.env["GIRDER_IO_CONCURRENCY"] = "0"
    grid_processes.distributor()
    victim = grid_processes.worker("victim")
    grid_processes.worker("survivor")
    await wait_for_nodes(redis_url, workers=2)
    job = client.submit(fan_of_fans, 6, 8, 40, "kill-worker")
    await wait_until(lambda: _running_on(redis_url, "victim"), what="victim running work")
    grid_processes.kill9(victim)
    assert await asyncio.wait_for(job, 60) == 6 * sum(range(8))
    assert await client.call(fan, 8, 40, "kill-worker-0") == sum(range(8))  # cached


async def _holding(url: str, worker: str, count: int) -> bool:
    return any(n.node == worker and n.running >= count for n in await nodes(url))


async def test_kill_9_of_a_worker_holding_a_batch_of_quick_requests_loses_nothing(
    grid_processes: GridProcesses, client: girder.Grid, redis_url: str
) -> None:
    """Quick sync requests are claimed several at a time and completed together: a worker
    killed with a batch claimed (and completions held back) loses none of them."""
    grid_processes.distributor()
    victim = grid_processes.worker("victim")
    grid_processes.worker("survivor")
    await wait_for_nodes(redis_url, workers=2)
    job = asyncio.ensure_future(client.call_all([(add, i, 7777) for i in range(20_000)]))
    await wait_until(lambda: _holding(redis_url, "victim", 2), what="victim holding a batch")
    grid_processes.kill9(victim)
    assert await asyncio.wait_for(job, 90) == [i + 7777 for i in range(20_000)]


async def test_kill_9_of_the_distributor_and_a_restart(
    grid_processes: GridProcesses, client: girder.Grid, redis_url: str
) -> None:
    distributor = grid_processes.distributor()
    grid_processes.worker("w1")
    grid_processes.worker("w2")
    await wait_for_nodes(redis_url, workers=2)
    job = client.submit(fan_of_fans, 4, 6, 30, "kill-distributor")
    await wait_until(
        lambda: any_running(redis_url), what="work running before the distributor dies"
    )
    grid_processes.kill9(distributor)
    more = client.submit(fan, 5, 20, "after-distributor-death")
    await asyncio.sleep(0.3)
    grid_processes.distributor()
    assert await asyncio.wait_for(job, 60) == 4 * sum(range(6))
    assert await asyncio.wait_for(more, 60) == sum(range(5))


async def test_redis_restart_mid_job(
    grid_processes: GridProcesses, client: girder.Grid, redis_url: str, redis_server: Any
) -> None:
    grid_processes.distributor()
    grid_processes.worker("w1")
    grid_processes.worker("w2")
    await wait_for_nodes(redis_url, workers=2)
    job = client.submit(fan_of_fans, 4, 6, 50, "redis-restart")
    await wait_until(lambda: any_running(redis_url), what="work running")
    redis_server.restart()
    assert await asyncio.wait_for(job, 90) == 4 * sum(range(6))


async def test_two_clients_share_the_cache(grid_processes: GridProcesses, redis_url: str) -> None:
    grid_processes.distributor()
    grid_processes.worker("w1")
    await wait_for_nodes(redis_url, workers=1)
    async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as first:
        assert await first.call(fan, 3, 10, "shared") == 3
    async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as second:
        assert await second.call(fan, 3, 10, "shared") == 3
        assert second.client.stats.cache_hits == 1


async def test_unknown_function_fails_only_its_request(
    grid_processes: GridProcesses,
    client: girder.Grid,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A function from a module only the client has: the worker cannot import it."""
    (tmp_path / "client_only_tasks.py").write_text(
        "import girder\n\n@girder.function\ndef secret(x):\n    return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    client_only = importlib.import_module("client_only_tasks")
    grid_processes.env["GIRDER_ALLOWED_MODULES"] = '["client_only_tasks"]'  # so it tries
    grid_processes.distributor()
    grid_processes.worker("w1")
    await wait_for_nodes(redis_url, workers=1)
    with pytest.raises(girder.RequestError) as caught:
        await client.call(client_only.secret, 1)
    assert caught.value.kind == "invalid"
    assert "client_only_tasks.secret cannot be imported" in caught.value.message
    assert "on node w1" in caught.value.message
    assert await client.call(add, 2, 2) == 4


def test_fast_recovery_settings_are_valid() -> None:
    values = {k.removeprefix("GIRDER_").lower(): v for k, v in FAST_RECOVERY.items()}
    assert Settings.model_validate(values).heartbeat_ttl == 1.5


async def test_sigterm_hands_work_back_at_once(redis_url: str, tmp_path: Path) -> None:
    """With a 60 s lease, only a graceful hand-back can finish the job quickly."""
    procs = GridProcesses(redis_url, tmp_path, GIRDER_HEARTBEAT_TTL="60")
    try:
        procs.distributor()
        leaving = procs.worker("leaving")
        await wait_for_nodes(redis_url, workers=1)
        async with girder.Grid.connect(
            redis_url, **{**CLIENT_OPTIONS, "heartbeat_ttl": 60}
        ) as grid:
            job = grid.submit(fan, 6, 300, "sigterm")
            await wait_until(lambda: _running_on(redis_url, "leaving"), what="work running")
            leaving.terminate()
            assert leaving.wait(timeout=10) == 0
            procs.worker("staying")
            assert await asyncio.wait_for(job, 15) == sum(range(6))
    finally:
        procs.stop_all()


async def test_grid_local_on_redis(redis_url: str) -> None:
    async with girder.Grid.local(workers=2, backend=redis_url, **CLIENT_OPTIONS) as grid:
        assert await grid.call(tree, 6, 0) == 127
        assert {n.node for n in await nodes(redis_url) if n.kind == NodeKind.WORKER} == {
            "pool-w1",
            "pool-w2",
        }


async def test_girder_up_and_status(redis_url: str, tmp_path: Path) -> None:
    env = GridProcesses(redis_url, tmp_path).env
    up = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [
            sys.executable,
            "-m",
            "girder",
            "up",
            "--backend",
            redis_url,
            "--workers",
            "2",
            "--import",
            "gridfns",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_nodes(redis_url, workers=2)
        async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as grid:
            assert await grid.call(tree, 5, 0) == 63
        status = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "girder", "status", "--backend", redis_url, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        report = json.loads(status.stdout)
        kinds = sorted(n["kind"] for n in report["nodes"] if n["alive"])
        assert kinds == ["distributor", "worker", "worker"]
        assert report["cache_size"] >= 63
        table = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "girder", "status"],
            env={**env, "GIRDER_BACKEND": redis_url},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "distributor" in table.stdout
        assert "cached results" in table.stdout
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=20) == 0
    assert [n for n in await nodes(redis_url) if n.kind != NodeKind.CLIENT] == []
