"""`girder up` supervises its children: restarts the dead, gives up on the hopeless, and keeps the
backend's password and the grid's secret off every command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gridfns import add, die, tree
from processes import GridProcesses, nodes, wait_for_nodes, wait_until

import girder
from girder.backends.base import NodeKind
from girder.testing.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

CLIENT_OPTIONS = {"heartbeat_interval": 0.2, "heartbeat_ttl": 1.5, "reap_interval": 0.3}
USER, PASSWORD = "girder-up-test", "pa55-w0rd-in-the-url"


def _up(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "girder", "up", *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _stop(up: subprocess.Popen[bytes]) -> int:
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
    return up.wait(timeout=30)


async def _alive_workers(url: str) -> set[str]:
    return {n.node for n in await nodes(url) if n.kind == NodeKind.WORKER and n.alive}


def _pid(node: str) -> int:
    """The process id in a generated node id (`worker-<host>-<pid>-<random>`)."""
    return int(node.rsplit("-", 2)[1])


async def test_up_restarts_a_killed_worker_and_outlives_a_poison_request(
    redis_url: str, tmp_path: Path
) -> None:
    env = GridProcesses(redis_url, tmp_path).env
    up = _up(
        env, tmp_path / "up.log", "--backend", redis_url, "--workers", "2", "--import", "gridfns"
    )
    try:
        await wait_for_nodes(redis_url, workers=2)
        victim = min(await _alive_workers(redis_url))
        os.kill(_pid(victim), signal.SIGKILL)

        async def replaced() -> bool:
            alive = await _alive_workers(redis_url)
            return len(alive) == 2 and victim not in alive

        await wait_until(replaced, what="a new worker in place of the killed one")
        async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as grid:
            poison = grid.submit(die, "poison")
            assert await asyncio.wait_for(grid.call(tree, 5, 0), 60) == 63
            with pytest.raises(girder.RequestError) as caught:
                await asyncio.wait_for(poison, 60)
            assert caught.value.kind == "crashed"
            await wait_for_nodes(redis_url, workers=2)
            assert await asyncio.wait_for(grid.call(add, 2, 3), 30) == 5
        assert up.poll() is None
    finally:
        assert _stop(up) == 0
    log = (tmp_path / "up.log").read_text()
    assert "died; restarting it" in log


async def test_up_gives_up_when_its_workers_cannot_start(redis_url: str, tmp_path: Path) -> None:
    env = {**GridProcesses(redis_url, tmp_path).env, "GIRDER_RESTART_LIMIT": "2"}
    start = time.monotonic()
    up = _up(
        env,
        tmp_path / "up.log",
        "--backend",
        redis_url,
        "--workers",
        "1",
        "--import",
        "no_such_module_here",
    )
    try:
        code = await asyncio.to_thread(up.wait, 60)
    finally:
        _stop(up)
    log = (tmp_path / "up.log").read_text()
    assert code == 1, log
    assert time.monotonic() - start < 60
    assert "worker-1 died 3 times within 60 s" in log
    assert "giving up" in log
    assert "cannot import module 'no_such_module_here'" in log
    assert not [n for n in await nodes(redis_url) if n.alive]  # the distributor stopped too


@pytest.fixture
def password_url(redis_server: RedisServer, redis_url: str) -> Iterator[str]:
    """The test server's URL as an ACL user with a password (the default user is unchanged)."""
    redis_server.command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    try:
        yield f"redis://{USER}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    finally:
        redis_server.command("ACL", "DELUSER", USER)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _command_lines(pids: list[int]) -> list[bytes]:
    return [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids]


async def test_up_keeps_password_and_secret_off_command_lines(
    password_url: str, redis_url: str, tmp_path: Path
) -> None:
    """With no secret configured, `girder up` makes one, in a file only the user can read."""
    env = GridProcesses(redis_url, tmp_path).env
    del env["GIRDER_SECRET"]
    env |= {"GIRDER_BACKEND": password_url, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    up = _up(env, tmp_path / "up.log", "--workers", "2", "--import", "gridfns")
    try:
        await wait_for_nodes(redis_url, workers=2)
        secret_file = tmp_path / "config" / "girder" / "secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        secret = secret_file.read_text().strip()
        children = _children(up.pid)
        assert len(children) == 3
        for command_line in _command_lines([up.pid, *children]):
            assert PASSWORD.encode() not in command_line
            assert secret.encode() not in command_line
        async with girder.Grid.connect(password_url, secret=secret, **CLIENT_OPTIONS) as grid:
            assert await asyncio.wait_for(grid.call(add, 2, 3), 30) == 5
    finally:
        assert _stop(up) == 0
    log = (tmp_path / "up.log").read_text()
    assert str(secret_file) in log
    assert secret not in log
    assert PASSWORD not in log
