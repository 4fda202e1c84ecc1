"""girder's types, as a user's type checker sees them: `tests/typecheck/check_types.py`
checked by `mypy --strict`, and the same calls run on a grid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typecheck.check_types import exercise

import girder

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ROOT / "tests" / "typecheck" / "check_types.py"


@pytest.mark.slow
def test_mypy_strict_sees_argument_and_result_types() -> None:
    # MYPYPATH: this checkout's girder, whatever the environment installed.
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(CHECKED),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_checked_calls_give_the_checked_values() -> None:
    async with girder.Grid.local(workers=2) as grid:
        await exercise(grid)
