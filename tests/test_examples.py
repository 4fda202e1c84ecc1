"""The examples and `girder demo` run as a newcomer would run them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import girder
from girder.demo import run_demo

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
ARGUMENTS = {"histogram.py": ["--mib", "8"]}
"""Options that keep an example small here (its full size is for people to run)."""


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(path), *ARGUMENTS.get(path.name, [])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"fib.py", "sharing.py", "error_chain.py"}


def test_girder_demo_command() -> None:
    command = shutil.which("girder") or str(Path(sys.executable).parent / "girder")
    done = subprocess.run(
        [command, "demo", "--workers", "3", "--jobs", "6"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Bogosity:pool-w") >= 6
    table = re.findall(r"^(pool-w\d)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", done.stdout, re.M)
    assert [row[0] for row in table] == ["pool-w1", "pool-w2", "pool-w3"]
    assert "came from the cache" in done.stdout
    assert re.search(
        r"6 jobs asked for 42 requests .*: 15 ran, \d+ were shared while in flight", done.stdout
    )


async def test_demo_shares_work_and_sub_jobs() -> None:
    report = await run_demo(workers=3, jobs=6, level=3, fanout=3, msec=2)
    assert len(report.results) == 6
    assert all(result.startswith("Bogosity:pool-w") for result in report.results)
    ran = {row[0]: row[1] for row in report.rows}
    # 6 top-level jobs + 3 distinct sub-jobs on each of 3 levels, each computed once
    assert sum(ran.values()) == 6 + 3 * 3
    assert report.ran == 6 + 3 * 3
    # asked: the 6 jobs, 3 sub-requests from each of them and from each of the 3 distinct
    # sub-jobs on levels 2 and 1; whatever did not run was shared in flight or cached
    assert report.asked == 6 + 6 * 3 + 3 * 3 + 3 * 3
    assert report.shared + report.cache_hits == report.asked - report.ran
    assert report.shared > 0
    assert sum(1 for node, count in ran.items() if node != "client" and count) >= 2
    client = next(row for row in report.rows if row[0] == "client")
    assert client[2] == 6  # the repeat round came from the cache


def test_public_names() -> None:
    """`__all__` lists exactly the public non-module names (as anyio's test does)."""
    public = {
        name
        for name, value in vars(girder).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(girder.__all__) - {"__version__"}
    assert {
        "function",
        "Request",
        "Grid",
        "call_reentrant",
        "current_node",
        "RequestError",
    } <= public
