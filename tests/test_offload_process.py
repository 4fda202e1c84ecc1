"""`sync_offload="process"`: slow sync grid functions of `Grid.local` run in child processes, so
pure-Python work never holds the host loop's GIL; quick ones still run inline."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import pytest
from gridfns import (
    stuck,
    sync_divide_slowly,
    sync_marked_pid_sleep,
    sync_marked_spin,
    sync_over_limit,
    sync_spin,
    sync_unpicklable,
    sync_where,
)
from processes import wait_until

import girder
from girder.config import load_settings
from girder.errors import ConfigurationError
from girder.scheduler import offload

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def unmeasured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no sync function measured (durations are learned per process)."""
    monkeypatch.setattr(offload, "_estimates", {})


def process_grid(workers: int = 2) -> girder.Grid:
    return girder.Grid.local(workers=workers, sync_offload="process")


async def _stalls_while(work: asyncio.Future[object]) -> list[float]:
    """How late each 1 ms sleep of the loop woke (something else held the loop or the GIL),
    until `work` is done."""
    stalls = []
    while not work.done():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        stalls.append(time.perf_counter() - before - 0.001)
    return stalls


def _started(marks: Path, prefix: str = "started-") -> list[int]:
    """The processes in which `sync_marked_pid_sleep` (or `stuck`) started."""
    return [int(mark.name.removeprefix(prefix)) for mark in marks.glob(f"{prefix}*")]


def _gone(pid: int) -> bool:
    """Whether no process (not even a zombie: it was waited for) has the id `pid`."""
    return not Path(f"/proc/{pid}").exists()


async def test_pure_python_functions_in_children_do_not_stall_the_host_loop() -> None:
    """Sync requests spinning 50 ms in Python bytecode. In the worker's thread the loop waits
    for the GIL a switch interval (5 ms) at nearly every wake-up, and 15 to 50 ms at worst; on
    the loop it would wait whole runs. In a child it waits for nothing: the median wake-up is
    on time (a tenth of a millisecond here). Bounded loosely: a busy machine stalls an idle loop
    too, rarely but by tens of milliseconds (`benchmarks/loop_stall.py` measures it)."""
    async with process_grid() as grid:
        await grid.call(sync_spin, 50, -1)  # children started, `sync_spin` measured slow
        work = asyncio.ensure_future(grid.call_all([(sync_spin, 50, i) for i in range(12)]))
        stalls = await _stalls_while(work)
        assert await work == list(range(12))
    assert statistics.median(stalls) < 0.0025, (
        f"median stall {1000 * statistics.median(stalls):.1f} ms"
    )
    assert max(stalls) < 0.1, f"the host loop stalled {1000 * max(stalls):.0f} ms"


async def test_slow_functions_run_in_children_and_quick_ones_inline_once_measured() -> None:
    """Quick runs measured in a child bring the function inline (a few of them, if a busy
    machine made the first one slow); one slow run sends it back to the children."""
    async with process_grid(workers=1) as grid:
        index, pid, node = await grid.call(sync_where, 0, 1)  # not measured yet: in a child
        assert (index, node) == (1, grid.workers[0].id)
        assert pid != os.getpid()
        quick = [await grid.call(sync_where, 0, i) for i in range(2, 40)]
        assert os.getpid() in {pid for _, pid, _ in quick}  # measured quick: on the loop
        # Slow again: a first slow run may be inline (nothing tells it apart beforehand), the
        # next ones are in a child.
        slow = await grid.call_all([(sync_where, 20, i) for i in range(40, 43)])
        assert [index for index, _, _ in slow] == [40, 41, 42]
        assert sum(pid == os.getpid() for _, pid, _ in slow) <= 1


async def test_children_run_one_function_per_baton_leaving_a_cpu_to_the_host() -> None:
    async with process_grid(workers=4) as grid:
        assert grid.children is not None
        assert grid.children.size == max(1, min(4, len(os.sched_getaffinity(0)) - 1))
        ran = await grid.call_all([(sync_where, 100, i) for i in range(8)])
        assert [index for index, _, _ in ran] == list(range(8))
        assert len({pid for _, pid, _ in ran}) <= grid.children.size


async def test_an_error_in_a_child_reads_as_in_the_thread() -> None:
    """Same type (`except ZeroDivisionError` catches it), message and worker-side traceback as
    the thread gives."""
    errors = []
    for mode in ("thread", "process"):
        async with girder.Grid.local(workers=1, sync_offload=mode) as grid:
            with pytest.raises(ZeroDivisionError) as caught:
                await grid.call(sync_divide_slowly, 5, 0)
        assert isinstance(caught.value, girder.RequestError)
        errors.append(caught.value)
    thread, process = errors
    assert process.message == thread.message == "ZeroDivisionError: division by zero"
    assert process.kind == thread.kind == "error"
    assert process.stack == thread.stack
    assert any("in _divided" in line for line in process.stack)


async def test_a_local_function_travels_to_the_child_by_value() -> None:
    """A function of `__main__`, a notebook or a local scope cannot be imported by a child: it
    travels by value (cloudpickle), with what it closes over."""
    offset = 100

    @girder.function
    def shifted(x: int) -> tuple[int, int]:
        time.sleep(0.005)
        return x + offset, os.getpid()

    async with process_grid() as grid:
        value, pid = await grid.call(shifted, 1)
    assert value == 101
    assert pid != os.getpid()


async def test_a_value_pickle_cannot_carry_fails_its_request_clearly() -> None:
    async with process_grid(workers=1) as grid:
        with pytest.raises(
            girder.RequestError,
            match=r"the result of sync_unpicklable\(5\) \(type lock\) cannot be pickled back",
        ) as caught:
            await grid.call(sync_unpicklable, 5)
        assert caught.value.kind == "invalid"
        index, pid, _ = await grid.call(sync_where, 5, 1)  # the child lives on
        assert index == 1
        assert pid != os.getpid()


async def test_no_child_process_outlives_its_grid(marks: Path) -> None:
    """Idle children and one busy in a 30 s function: all are killed and waited for."""
    stopping = 0.0
    async with process_grid() as grid:
        assert grid.children is not None
        await grid.call_all([(sync_where, 20, i) for i in range(4)])
        grid.submit(sync_marked_pid_sleep, 30_000, str(marks))

        async def started() -> bool:
            return bool(_started(marks))

        await wait_until(started, what="the sync function to start in a child")
        pids = grid.children.pids()
        assert pids
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 5
    assert all(_gone(pid) for pid in pids), [pid for pid in pids if not _gone(pid)]


async def test_a_killed_child_fails_its_request_and_the_grid_goes_on(marks: Path) -> None:
    async with process_grid(workers=1) as grid:
        handle = grid.submit(sync_marked_pid_sleep, 30_000, str(marks))

        async def started() -> bool:
            return bool(_started(marks))

        await wait_until(started, what="the sync function to start in a child")
        (pid,) = _started(marks)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(handle, 20)
        assert caught.value.kind == "crashed"
        assert re.search(r"child process running it died \(killed by SIGKILL", str(caught.value))
        index, pid, _ = await grid.call(sync_where, 20, 1)  # a new child
        assert index == 1
        assert pid != os.getpid()


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIRDER_SYNC_OFFLOAD", "process")
    assert load_settings().sync_offload == "process"
    assert load_settings(sync_offload="thread").sync_offload == "thread"
    monkeypatch.setenv("GIRDER_SYNC_OFFLOAD", "fork")
    with pytest.raises(ConfigurationError, match="sync_offload"):
        load_settings()


async def test_a_busy_child_exits_when_its_host_is_killed(marks: Path) -> None:
    """The host dies (`kill -9`) while its child runs a 60 s function: the child notices within
    a second that its parent is gone and exits."""
    script = (
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import girder\n"
        "from gridfns import sync_marked_pid_sleep\n"
        "async def main():\n"
        "    async with girder.Grid.local(workers=1, sync_offload='process') as grid:\n"
        f"        await grid.call(sync_marked_pid_sleep, 60_000, {str(marks)!r})\n"
        "asyncio.run(main())\n"
    )
    host = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    try:

        async def started() -> bool:
            return bool(_started(marks))

        await wait_until(started, what="the sync function to start in a child")
        (child,) = _started(marks)
        assert child != host.pid
    finally:
        host.kill()
        await host.wait()

    async def child_gone() -> bool:
        return _gone(child)

    await wait_until(child_gone, timeout=10, what=f"the orphaned child {child} to exit")


async def test_a_sync_function_past_its_time_limit_is_stopped_with_its_child(marks: Path) -> None:
    """`stuck` loops forever under a 1 s limit: in the worker's thread nothing could stop it (in
    `Grid.local` it would hold its baton for good); in a child, the child is killed at the
    limit and the request fails with kind "timeout"."""
    async with process_grid(workers=1) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(grid.call(stuck, str(marks)), 30)
        assert caught.value.kind == "timeout"
        assert "time limit of 1 s" in caught.value.message
        (child,) = _started(marks, "stuck-")
        assert _gone(child)
        assert await grid.call(sync_over_limit, 10) == 10  # the worker goes on, in a new child


@pytest.mark.parametrize("how", ["handle", "job id"])
async def test_cancelling_a_job_kills_the_child_running_its_sync_function(
    marks: Path, how: str
) -> None:
    """A sync function spins in pure Python for a minute: in the worker's thread nothing could
    stop it; in a child, cancelling its job kills the child at once (and waits for it). The
    caller hears of it as in thread mode, not as a crash: `CancelledError` when it cancelled its
    own handle, `girder.Cancelled` naming the job when the job was cancelled by id. The next
    request runs in a new child."""
    async with process_grid(workers=1) as grid:
        handle = grid.submit(sync_marked_spin, 60_000, str(marks))

        async def started() -> bool:
            return bool(_started(marks, "spinning-"))

        await wait_until(started, what="the sync function to start in a child")
        (child,) = _started(marks, "spinning-")
        if how == "handle":
            assert handle.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(handle, 20)
        else:
            assert await grid.cancel(handle.job) >= 1
            with pytest.raises(girder.Cancelled) as caught:
                await asyncio.wait_for(handle, 20)
            assert caught.value.kind == "cancelled"
            assert caught.value.job == handle.job

        async def child_gone() -> bool:
            return _gone(child)

        await wait_until(child_gone, timeout=10, what=f"the cancelled child {child} to exit")
        index, pid, _ = await asyncio.wait_for(grid.call(sync_where, 20, 1), 20)
        assert index == 1
        assert pid not in (os.getpid(), child)


async def test_a_child_imports_from_a_path_added_after_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook adds a folder to `sys.path` and imports a module from it while the grid runs:
    the children follow, and unpickle arguments of the module's classes once it is imported."""
    (tmp_path / "late_module.py").write_text(
        "import os, time\n"
        "import girder\n"
        "class Box:\n"
        "    def __init__(self, n):\n"
        "        self.n = n\n"
        "@girder.function\n"
        "def unbox(box):\n"
        "    time.sleep(0.005)\n"
        "    return box.n, os.getpid()\n"
    )
    async with process_grid(workers=1) as grid:
        await grid.call(sync_where, 5, 1)  # the child is started
        monkeypatch.syspath_prepend(str(tmp_path))
        late_module = importlib.import_module("late_module")
        value, pid = await grid.call(late_module.unbox, late_module.Box(7))
    assert value == 7
    assert pid != os.getpid()
