"""Topologies (seed 003): spouts and workers on the grid, on the embedded grid (memory) and on
Redis with two `girder worker` processes. The topologies are in `topofns`."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import topofns
from processes import CLIENT_OPTIONS, GridProcesses, wait_for_nodes, wait_until
from topofns import lines

import girder
from girder.config import load_settings
from girder.supervisor import planned_children

pytestmark = pytest.mark.timeout(120)

Run = Callable[..., Any]


@asynccontextmanager
async def topology_grid(
    url: str | None, logs: Path, *worker_options: str
) -> AsyncIterator[tuple[girder.Grid, GridProcesses | None]]:
    """Two workers: in this process on memory, or worker processes importing topofns on Redis."""
    if url is None:
        async with girder.Grid.local(workers=2) as grid:
            yield grid, None
        return
    procs = GridProcesses(url, logs)
    try:
        procs.distributor()
        for name in ("w1", "w2"):
            procs.worker(name, "pool", "--import", "topofns", *worker_options)
        await wait_for_nodes(url, workers=2)
        async with girder.Grid.connect(url, **CLIENT_OPTIONS) as grid:
            yield grid, procs
    finally:
        procs.stop_all()


@pytest.fixture
async def grid(backend_url: str | None, tmp_path: Path) -> AsyncIterator[girder.Grid]:
    async with topology_grid(backend_url, tmp_path / "logs") as (found, _):
        yield found


@pytest.fixture(autouse=True)
def plan(marks: Path) -> None:
    topofns.PLAN.clear()
    topofns.PLAN["marks"] = str(marks)


async def everything(grid: girder.Grid, topology: girder.Topology, **options: Any) -> list[Any]:
    return [item async for item in grid.run(topology, **options)]


async def test_the_seeds_a_and_b_to_c(grid: girder.Grid, marks: Path) -> None:
    topofns.PLAN.update(a=list(range(12)), b=list(range(12)))
    outputs = await everything(grid, topofns.abc)
    assert sorted(seq for seq, _ in outputs) == list(range(12))
    for seq, value in outputs:
        assert value == {"seq": seq, "parts": ["camera_a", "camera_b"], "from": [seq, seq]}
    assert sorted(int(line.split()[0]) for line in lines(marks, "stitch")) == list(range(12))


async def test_a_bundle_runs_only_when_every_upstream_delivered_its_seq_id(
    grid: girder.Grid, marks: Path
) -> None:
    # camera_a sends everything at once; camera_b (a sync spout) later, and never seq id 5.
    topofns.PLAN.update(a=list(range(10)), b=[seq for seq in range(10) if seq != 5])
    seen = []
    async for seq, value in grid.run(topofns.abc):
        assert seq in topofns.PLAN["b_emitted"], f"bundle {seq} ran before camera_b sent it"
        assert value["from"] == [seq, seq]
        seen.append(seq)
    assert sorted(seen) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert "5" not in {line.split()[0] for line in lines(marks, "stitch")}


async def test_sequential_bundles_run_in_order_when_they_complete_out_of_order(
    grid: girder.Grid, marks: Path
) -> None:
    seqs = [0, 1, 2, 3, 5, 8, 13, 21]  # sparse: "the bundle before" is the previous seq id
    topofns.PLAN.update(seqs=seqs)
    outputs = await everything(grid, topofns.ordered)
    assert sorted(seq for seq, _ in outputs) == seqs
    developed = [int(line) for line in lines(marks, "developed")]
    assert sorted(developed) == seqs
    assert developed != seqs, "the bundles did not complete out of order: nothing was tested"
    expected = [line for seq in seqs for line in (f"start {seq}", f"end {seq}")]
    assert lines(marks, "in_order") == expected


async def test_a_worker_without_bundle_sees_every_value_once(
    grid: girder.Grid, marks: Path
) -> None:
    topofns.PLAN.update(seqs=list(range(15)))
    outputs = await everything(grid, topofns.merge)
    expected = Counter((side, (side, side, seq)) for side in ("left", "right") for seq in range(15))
    assert Counter((value[0], value) for _, value in outputs) == expected
    calls = Counter(lines(marks, "each"))
    assert calls == Counter(f"{side} {seq}" for side in ("left", "right") for seq in range(15))


async def test_back_pressure_bounds_what_waits_between_a_fast_spout_and_a_slow_worker(
    grid: girder.Grid,
) -> None:
    count = 80
    topofns.PLAN.update(count=count, emitted=0, received=0, gaps=[])
    values = []
    async for _, value in grid.run(topofns.pressure):
        topofns.PLAN["received"] += 1
        values.append(value)
    assert sorted(values) == [2 * seq for seq in range(count)]
    # Values emitted and not yet out of the sink: at most max_pending=4 ever (not `count`).
    assert max(topofns.PLAN["gaps"]) <= topofns.slow.max_pending
    assert max(topofns.PLAN["gaps"]) >= 2  # the spout did run ahead of the slow worker


async def test_a_failing_stage_is_reported_with_its_seq_id_and_the_topology_goes_on(
    grid: girder.Grid,
) -> None:
    outputs = await everything(grid, topofns.failing)
    errors = [(seq, value) for seq, value in outputs if isinstance(value, girder.StageError)]
    assert [(seq, error.stage, error.seq) for seq, error in errors] == [(3, "picky", 3)]
    assert isinstance(errors[0][1], girder.RequestError)
    assert "three is not allowed" in str(errors[0][1])
    # seq 3 failed and seq 4 sent nothing (None): the sequential stage skipped both.
    values = sorted((seq, value) for seq, value in outputs if seq not in (3,))
    assert values == [(0, 0), (1, 10), (2, 20), (5, 50)]


async def test_stop_on_error_raises_the_stage_error(grid: girder.Grid) -> None:
    with pytest.raises(girder.StageError) as caught:
        await everything(grid, topofns.failing, stop_on_error=True)
    assert (caught.value.stage, caught.value.seq) == ("picky", 3)


async def test_the_debugger_gets_a_stage_s_outputs_and_prints_while_it_runs(
    grid: girder.Grid, backend_url: str | None
) -> None:
    topofns.PLAN.update(count=6)
    events: list[tuple[str, Any]] = []

    def watch(stage: str, seq: int | None, item: Any) -> None:
        assert stage == "talker"
        events.append(("debug", (seq, item)))

    async for seq, value in grid.run(topofns.chatty, debug={"talker": watch}):
        events.append(("output", (seq, value)))
    for seq in range(6):
        mine = [item for kind, (s, item) in events if kind == "debug" and s == seq]
        printed = [item for item in mine if isinstance(item, girder.Printed)]
        assert [p.text.split(" from ")[0] for p in printed if p.stream == "stdout"] == [
            f"hello {seq}"
        ]
        assert [p.text for p in printed if p.stream == "stderr"] == [f"careful {seq}"]
        pids = {int(p.text.split(" from ")[1]) for p in printed if p.stream == "stdout"}
        if backend_url is not None:
            assert pids
            assert os.getpid() not in pids, "the stage ran in this process"
        assert f"W{seq}" in mine
        # The output reached the debugger before the run yielded it.
        assert events.index(("debug", (seq, f"W{seq}"))) < events.index(
            ("output", (seq, f"W{seq}"))
        )
    assert not any("noise" in str(item) for kind, (_, item) in events if kind == "debug")


async def test_a_watched_spout_reports_its_values(grid: girder.Grid) -> None:
    topofns.PLAN.update(count=3)
    seen: list[tuple[int | None, Any]] = []
    await everything(
        grid, topofns.chatty, debug={"words": lambda _, seq, item: seen.append((seq, item))}
    )
    assert seen == [(0, "w0"), (1, "w1"), (2, "w2")]


async def test_leaving_the_loop_early_stops_the_run_and_its_spouts(grid: girder.Grid) -> None:
    seen = []
    async with aclosing(grid.run(topofns.endless)) as outputs:
        async for seq, _ in outputs:
            seen.append(seq)
            if len(seen) == 5:
                break
    assert len(seen) == 5
    # The endless sync spout's thread got CancelledError from its emit: no thread is left.
    await wait_until(_no_spout_thread, what="the spout's thread to end")


async def _no_spout_thread() -> bool:
    return not any(
        summary.name == "forever" and summary.filename == topofns.__file__
        for frame in sys._current_frames().values()
        for summary in traceback.extract_stack(frame)
    )


async def test_bad_definitions_and_arguments_are_clear_errors(grid: girder.Grid) -> None:
    topology = girder.Topology("bad")
    with pytest.raises(ValueError, match="no stage declared before"):
        topology.worker(upstream=["nowhere"])(lambda seq, value, upstream: value)
    with pytest.raises(ValueError, match=r"upstream <stage abc\.camera_a> is no stage"):
        topology.worker(upstream=[topofns.camera_a])  # another topology's stage
    source = topology.spout(lambda emit: None)
    with pytest.raises(ValueError, match="sequential=True needs bundle=True"):
        topology.worker(upstream=[source], sequential=True)(lambda seq, value, upstream: value)
    with pytest.raises(girder.StageError, match="a seq id is an int, not str"):
        await everything(grid, _with_a_bad_seq(), stop_on_error=True)
    with pytest.raises(ValueError, match="has no stage 'nope'"):
        grid.run(topofns.abc, debug={"nope": print})


def _with_a_bad_seq() -> girder.Topology:
    topology = girder.Topology("bad seq")

    @topology.spout
    async def source(emit: Any) -> None:
        await emit("one", 1)

    @topology.worker(upstream=[source])
    def sink(seq: int, value: int, upstream: str) -> int:
        return value

    return topology


# -- Redis only: a crash, log files ---------------------------------------------------------------


async def test_kill_9_mid_bundle_every_seq_id_reaches_the_sink_once(
    redis_url: str, tmp_path: Path, marks: Path
) -> None:
    topofns.PLAN.update(count=8, stuck=3)
    async with topology_grid(redis_url, tmp_path / "logs") as (grid, procs):
        assert procs is not None
        run = asyncio.ensure_future(everything(grid, topofns.crash))

        async def stuck_started() -> bool:
            return any(line.startswith("3 ") for line in lines(marks, "fragile"))

        await wait_until(stuck_started, what="the bundle of seq 3 to start")
        pid = int(
            next(line for line in lines(marks, "fragile") if line.startswith("3 ")).split()[1]
        )
        victim = next(p for p in procs.procs if p.poll() is None and os.getpgid(pid) == p.pid)
        procs.kill9(victim)
        (marks / "go").touch()
        outputs = await asyncio.wait_for(run, 90)
    assert Counter(seq for seq, _ in outputs) == Counter(range(8)), procs.log_text()
    assert all(value == seq * 100 for seq, value in outputs)
    runs_of_3 = [line for line in lines(marks, "fragile") if line.startswith("3 ")]
    assert len(runs_of_3) == 2
    assert runs_of_3[0] != runs_of_3[1]  # it ran again, in another process


async def test_log_files_per_node(redis_url: str, tmp_path: Path) -> None:
    logs = tmp_path / "node-logs"
    topofns.PLAN.update(count=6)
    async with topology_grid(
        redis_url, tmp_path / "logs", "--log-dir", str(logs), "--log-level", "INFO"
    ) as (grid, _):
        await everything(grid, topofns.chatty)
    assert sorted(p.name for p in logs.iterdir()) == ["w1.err", "w1.out", "w2.err", "w2.out"]
    printed = "".join((logs / f"{name}.out").read_text() for name in ("w1", "w2"))
    assert sorted(line for line in printed.splitlines() if line.startswith("noise")) == sorted(
        f"noise {seq}" for seq in range(6)
    )
    for name in ("w1", "w2"):
        err = (logs / f"{name}.err").read_text()
        assert f"event='worker ready' node='{name}'" in err
        assert "noise" not in err


def test_girder_up_passes_log_dir_and_level_to_its_children(tmp_path: Path) -> None:
    settings = load_settings(log_dir=str(tmp_path), log_level="INFO", workers=2)
    for child in planned_children(settings):
        command = " ".join(child.command)
        assert f"--log-dir {tmp_path}" in command
        assert "--log-level INFO" in command
