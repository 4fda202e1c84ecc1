"""`Grid.local(processes=N)`: a private redis-server, a distributor and N worker processes, from a
script or a notebook, and nothing left behind (no process, no socket, no directory), even when
the script is killed; `girder up` without a backend does the same from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import girder
from girder.errors import ConfigurationError

pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]

SCRIPT = """
import asyncio, json, os, sys
import girder

@girder.function
def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()

@girder.function
async def total(n: int) -> int:
    values = await girder.call_reentrant([(square, i) for i in range(n)])
    return sum(value for value, _ in values)

async def main() -> None:
    async with girder.Grid.local(processes=2) as grid:
        report = {
            "directory": str(grid.processes.directory),
            "total": await grid.call(total, 10),
            "pids": sorted({pid for _, pid in await grid.call_all(
                [(square, i) for i in range(100, 160)]
            )}),
        }
        print(json.dumps(report), flush=True)
        if sys.argv[1:] == ["hang"]:
            await asyncio.sleep(3600)

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    here = Path(girder.__file__).resolve().parent.parent
    path = os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIRDER_")}
    return {**env, "PYTHONPATH": path}


def _holders(directory: str) -> list[int]:
    """This user's processes that name `directory` in their command line or environment."""
    found = []
    needle = directory.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def _wait_gone(directory: str, timeout: float = 60) -> None:
    """Until no process names `directory` and the directory is deleted."""
    deadline = time.monotonic() + timeout
    while _holders(directory) or Path(directory).exists():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"left behind: processes {_holders(directory)}, "
                f"directory exists: {Path(directory).exists()}"
            )
        time.sleep(0.1)


def _check_report(report: dict[str, object]) -> None:
    assert report["total"] == sum(i * i for i in range(10))
    pids = report["pids"]
    assert isinstance(pids, list)
    assert 1 <= len(pids) <= 2


def test_a_script_runs_on_worker_processes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    _check_report(report)
    assert os.getpid() not in report["pids"]
    _wait_gone(str(report["directory"]), timeout=10)  # stopped before the script ended


def test_a_killed_script_leaves_nothing_behind(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), "hang"],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        report = json.loads(process.stdout.readline())
        _check_report(report)
        directory = str(report["directory"])
        assert _holders(directory)  # redis-server, girder up and its children
        process.send_signal(signal.SIGKILL)
        process.wait()
        _wait_gone(directory)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _kernel_spec(root: Path) -> Path:
    """A Jupyter data folder with a kernel spec that runs this Python (with its packages)."""
    spec = root / "kernels" / "girder-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "girder test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return root


NOTEBOOK_CELLS = [
    """
    import os
    import girder

    @girder.function
    def cube(x: int) -> tuple[int, int]:
        return x ** 3, os.getpid()
    """,
    """
    grid = girder.Grid.local(processes=2)
    await grid.start()
    directory = str(grid.processes.directory)
    """,
    """
    values = await grid.call_all([(cube, i) for i in range(20)])
    print("sum", sum(v for v, _ in values))
    print("remote", os.getpid() not in {pid for _, pid in values})
    """,
    """
    print("directory", directory)
    """,
]

STOP_CELL = """
await grid.stop()
print("gone", not os.path.exists(directory))
"""


@pytest.mark.parametrize("stop", [True, False], ids=["stopped", "kernel-ends"])
def test_a_notebook_runs_on_worker_processes_and_leaves_nothing_behind(
    stop: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped in a cell, or left running when the kernel shuts down (as after `ray.init()`
    without `ray.shutdown()`): either way nothing is left behind."""
    for name, value in _env().items():
        monkeypatch.setenv(name, value)
    for name in [name for name in os.environ if name.startswith("GIRDER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec(tmp_path / "jupyter")))
    notebook = nbformat.v4.new_notebook()
    cells = [*NOTEBOOK_CELLS, STOP_CELL] if stop else NOTEBOOK_CELLS
    notebook.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    NotebookClient(
        notebook, kernel_name="girder-test", timeout=180, resources={"metadata": {"path": tmp_path}}
    ).execute()
    text = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert f"sum {sum(i**3 for i in range(20))}" in text
    assert "remote True" in text
    assert ("gone True" in text) is stop
    directory = text.split("directory ")[1].split()[0]
    _wait_gone(directory, timeout=10 if stop else 60)


def test_girder_up_without_a_backend_runs_a_private_grid(tmp_path: Path) -> None:
    """The URL on stdout reaches the grid (with the secret given); SIGTERM stops everything."""
    secret = "a secret of this test only"
    env = {**_env(), "GIRDER_SECRET": secret}
    tests = str(Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join([tests, env["PYTHONPATH"]])
    up = subprocess.Popen(
        [sys.executable, "-m", "girder", "up", "--workers", "1", "--import", "gridfns"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stdout is not None
        line = up.stdout.readline().strip()
        assert line.startswith("GIRDER_BACKEND=unix://"), line
        url = line.removeprefix("GIRDER_BACKEND=")
        directory = str(Path(url.removeprefix("unix://")).parent)
        assert oct(Path(directory).stat().st_mode & 0o777) == "0o700"
        value = subprocess.run(
            [
                sys.executable,
                "-c",
                "import asyncio, girder, gridfns\n"
                "async def main():\n"
                f"    async with girder.Grid.connect({url!r}) as grid:\n"
                "        print(await asyncio.wait_for(grid.call(gridfns.add, 2, 3), 120))\n"
                "asyncio.run(main())\n",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert value.stdout.strip() == "5", value.stderr
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        _wait_gone(directory, timeout=10)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if up.stdout is not None:
            up.stdout.close()


def test_without_redis_server_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server there
    with pytest.raises(ConfigurationError, match=r"redis-server.*apt-get install redis-server"):
        girder.Grid.local(processes=2)


def test_processes_take_neither_workers_nor_a_backend() -> None:
    with pytest.raises(ConfigurationError, match="processes=N"):
        girder.Grid.local(workers=2, processes=2)
