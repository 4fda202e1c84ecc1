"""Seeded chaos against a Redis grid of real processes (the harness: chaos.py, chaos_checks.py).

    pytest tests/test_chaos.py                              # the short run (35 s), default seed
    GIRDER_CHAOS_SEED=14 GIRDER_CHAOS_SECONDS=35 pytest tests/test_chaos.py -k short   # replay
    GIRDER_CHAOS_LONG=1 GIRDER_CHAOS_SECONDS=600 pytest tests/test_chaos.py -k long    # opt-in

GIRDER_CHAOS_PROXY=0 runs without the fault proxy; GIRDER_CHAOS_FAULTS=kill_worker,pause_redis
draws only those kinds of fault (see chaos.PROCESS_FAULTS and chaos.PROXY_FAULTS). Each run prints
its schedule first and a summary at the end; `report.txt` and every process's log, run log and
answers stay under the test's tmp dir, and a failure shows the violations, the timeline of what
the harness did and the tail of every log.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import chaos
import pytest
from chaos import (
    LONG_ENV,
    SECONDS_ENV,
    ChaosConfig,
    Fault,
    ServerChaosRun,
    check_chaos,
    make_plan,
    make_schedule,
)
from chaos_checks import LEASE, Run, Timeline, find_overlaps, rerun_reason, reruns
from processes import signal_group

from girder.testing.redis_server import RedisServer

SHORT_SECONDS = 35.0
LONG_SECONDS = 600.0
_seconds = float(os.environ.get(SECONDS_ENV, "0")) or None


async def _chaos(
    config: ChaosConfig, server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIRDER_SECRET", config.secret)
    await check_chaos(ServerChaosRun(config, server, tmp_path))


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout((_seconds or SHORT_SECONDS) + 240)
@pytest.mark.parametrize("spread_results", [False, True], ids=["default", "spreading-results"])
async def test_chaos_short(
    persistent_redis: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spread_results: bool,
) -> None:
    """About 35 s of faults with the default seed (GIRDER_CHAOS_SEED / _SECONDS replay); the
    second run with cached results moved to their keys' own slots (`spread_results`): every
    process moves, looks up and counts them there."""
    config = ChaosConfig.from_env(SHORT_SECONDS)
    if spread_results:
        config = dataclasses.replace(config, spread_results=True)
    await _chaos(config, persistent_redis, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout((_seconds or LONG_SECONDS) + 600)
async def test_chaos_long(
    persistent_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opt-in: GIRDER_CHAOS_LONG=1 (length GIRDER_CHAOS_SECONDS, default 600 s)."""
    if os.environ.get(LONG_ENV) != "1":
        pytest.skip(f"the long chaos run is opt-in: {LONG_ENV}=1")
    config = ChaosConfig.from_env(LONG_SECONDS)
    await _chaos(config, persistent_redis, tmp_path, monkeypatch)


# -- the harness itself (quick) --------------------------------------------------------------------


def test_a_seed_gives_one_schedule_and_one_plan() -> None:
    assert make_schedule(5, 40, proxy=True) == make_schedule(5, 40, proxy=True)
    assert make_schedule(5, 40, proxy=False) != make_schedule(6, 40, proxy=False)
    assert make_plan(5, 0) == make_plan(5, 0)
    assert make_plan(5, 0) != make_plan(5, 1)
    faults = make_schedule(5, 40, proxy=False)
    assert faults
    assert all(2 < f.at <= 40 for f in faults)
    assert all(f.length > LEASE for f in faults if f.kind == "stop_worker")


def test_the_plans_share_keys_between_clients() -> None:
    first = {(j.fn, j.args) for j in make_plan(5, 0)}
    second = {(j.fn, j.args) for j in make_plan(5, 1)}
    assert first & second


def test_overlaps_are_excused_only_by_a_stop_past_the_lease() -> None:
    timeline = Timeline(start=0.0)
    runs = [Run("k", 1, "w1", 1.0, 5.0, "ok"), Run("k", 2, "w2", 3.0, 4.0, "ok")]
    (overlap,) = find_overlaps(runs, timeline, "always")
    assert overlap.excuse is None
    timeline.stops.append((1, 2.0, 2.0 + 2 * LEASE))
    (overlap,) = find_overlaps(runs, timeline, "always")
    assert overlap.excuse is not None
    assert "SIGSTOP" in overlap.excuse
    short = Timeline(start=0.0, stops=[(1, 2.0, 2.0 + LEASE / 2)])
    assert find_overlaps(runs, short, "always")[0].excuse is None


def test_runs_one_after_the_other_are_no_overlap_but_a_rerun() -> None:
    timeline = Timeline(start=0.0)
    first, second = Run("k", 1, "w1", 1.0, 2.0, "ok"), Run("k", 2, "w2", 3.0, 4.0, "ok")
    assert find_overlaps([first, second], timeline, "always") == []
    assert rerun_reason(first, second, timeline, "always").startswith("UNEXPLAINED")
    timeline.killed[1] = 2.5
    assert "killed" in rerun_reason(first, second, timeline, "always")
    assert Fault(1.0, "kill_worker", 3).describe().endswith("kill_worker #3")


def test_the_claim_a_worker_was_starting_when_stopped_is_excused() -> None:
    """The second runner was starting the key when it was stopped past its lease (after its
    lease check), and ran it on waking: its first run after the stop."""
    woke = 0.5 + 2 * LEASE
    timeline = Timeline(start=0.0, stops=[(2, 0.5, woke)])
    first, second = Run("k", 1, "w1", 1.0, 2.0, "ok"), Run("k", 2, "w2", woke, 9, "ok")
    assert reruns([first, second], timeline, "always") == {
        "k": [rerun_reason(first, second, timeline, "always")]
    }
    assert "stale claim" in rerun_reason(first, second, timeline, "always")


def test_other_claims_run_on_waking_are_not_excused() -> None:
    """A worker confirms its lease before it starts another claim after a stop past its lease,
    and drops the claims if it was reaped: a second stale run on waking is a violation."""
    woke = 0.5 + 2 * LEASE
    timeline = Timeline(start=0.0, stops=[(2, 0.5, woke)])
    runs = [
        Run("j", 1, "w1", 1.0, 2.0, "ok"),
        Run("k", 1, "w1", 1.0, 2.0, "ok"),
        Run("j", 2, "w2", woke + 0.001, woke + 1, "ok"),
        Run("k", 2, "w2", woke + 0.002, woke + 1, "ok"),
    ]
    found = reruns(runs, timeline, "always")
    assert "stale claim" in found["j"][0]
    assert found["k"][0].startswith("UNEXPLAINED")
    late = [Run("j", 1, "w1", woke + 0.5, woke + 2, "ok"), *runs[2:3]]
    (overlap,) = find_overlaps(late, timeline, "always")
    assert overlap.excuse is not None
    assert "stale claim" in overlap.kind
    late.append(Run("k", 1, "w1", woke + 0.5, woke + 2, "ok"))
    late.append(Run("k", 2, "w2", woke + 0.6, woke + 1, "ok"))
    assert [o.excuse is None for o in find_overlaps(late, timeline, "always")] == [False, True]


def test_one_process_running_a_stale_claim_and_a_new_one_is_excused() -> None:
    """Woken from a stop past its lease, a worker runs the claim it was starting before the
    stop; the same key runs again in that process."""
    timeline = Timeline(start=0.0, stops=[(1, 1.0, 1.0 + 2 * LEASE)])
    woke = 1.0 + 2 * LEASE
    runs = [Run("k", 1, "w1", woke + 0.01, woke + 1, "ok"), Run("k", 1, "w1", woke + 0.02)]
    (overlap,) = find_overlaps(runs, timeline, "always")
    assert overlap.excuse is not None


def test_a_stop_ends_when_the_sigcont_goes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A woken worker may log the start of a stale claim before the harness reads the clock
    after sending SIGCONT (seed 3 did, 0.5 ms early): the stop must end no later than the send,
    or the checks call that run an unexplained rerun."""
    server = cast(RedisServer, SimpleNamespace(url="redis://127.0.0.1:1/0"))
    run = ServerChaosRun(ChaosConfig(proxy=False), server, tmp_path)
    sent: list[float] = []

    def send(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
        signal_group(proc, signum)
        sent.append(time.monotonic())  # from here on the process may run and log

    monkeypatch.setattr(chaos, "signal_group", send)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        signal_group(proc, signal.SIGSTOP)
        run.stopped[proc.pid] = (proc, "w1", time.monotonic() - 2 * LEASE)  # past the lease
        run.cont(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    ((pid, _stopped, woke),) = run.timeline.stops
    assert pid == proc.pid
    assert woke <= sent[0]
    stale = Run("k", proc.pid, "w1", sent[0], sent[0] + 1, "ok")
    first = Run("k", 1, "w2", woke - 1, woke - 0.5, "ok")
    (reason,) = reruns([first, stale], run.timeline, "always")["k"]
    assert "stale claim" in reason
