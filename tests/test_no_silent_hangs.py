"""Mistakes fail with a clear error instead of waiting forever: a stopped grid, a memory backend
given to processes that cannot share it, a pool nobody serves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gridfns import add

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
