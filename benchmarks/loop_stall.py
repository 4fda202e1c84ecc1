"""The host's event loop while `Grid.local` runs slow sync grid functions: its worst stall.

A ticker task on the same loop sleeps 1 ms again and again and records how late each wake-up is
(the stall: how long something else held the loop). Meanwhile `Grid.local(workers=4)` runs
`requests` distinct sync requests of `ms` milliseconds each: `busy` spins in Python bytecode
(holding the GIL), `blocking` sleeps (releasing it, as I/O and NumPy do). `idle` is the ticker
alone, no grid, as long as the requests would take one after the other: the machine's own noise,
to read the others against. `busy` and `blocking` run under each `sync_offload` mode: "thread"
(the worker's thread) and "process" (child processes). Each run uses a fresh grid in a fresh
process-wide state (sync durations are learned per process: the first run of a function goes
off the loop, so even it does not stall the loop).

    .venv/bin/python benchmarks/loop_stall.py [--runs 3] [--requests 40] [--ms 50]
        [--modes thread,process] [--switch-interval 0.001]

One JSON line per workload and mode: `max_stall_ms` (the median over runs of each run's worst
stall, with the range in `max_stall_range_ms`) and `p99_stall_ms` (likewise).
Target: a worst stall of at most 5 ms while sync functions of 50 ms run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import girder
from benchmarks.harness import fresh_tag, percentile, say
from benchmarks.workloads import blocking, busy

Stalls = tuple[list[float], float]
"""One run: the ticker's stalls (seconds late) and how long the requests took."""

TICK = 0.001
"""Seconds the ticker sleeps between two looks at the clock."""


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(TICK)
        stalls.append(max(0.0, time.perf_counter() - before - TICK))


async def idle_run(seconds: float) -> Stalls:
    """The ticker's stalls with no grid at all, for `seconds`: the machine's own noise."""
    stalls: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(stalls, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await ticker
    return stalls, seconds


async def one_run(function: Any, requests: int, ms: int, mode: str) -> Stalls:
    """The ticker's stalls while the requests run, and how long they took."""
    stalls: list[float] = []
    stop = asyncio.Event()
    async with girder.Grid.local(workers=4, sync_offload=mode) as grid:
        ticker = asyncio.create_task(_ticker(stalls, stop))
        await asyncio.sleep(0.05)  # the ticker's own baseline first
        started = time.perf_counter()
        base = hash(fresh_tag("stall")) % 10**9
        values = await grid.call_all([(function, ms, base + i) for i in range(requests)])
        elapsed = time.perf_counter() - started
        stop.set()
        await ticker
    if values != [base + i for i in range(requests)]:
        raise AssertionError("wrong values")
    return stalls, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--ms", type=int, default=50)
    parser.add_argument("--modes", default="thread,process", help="sync_offload modes to run")
    parser.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval(seconds) first (default: 5 ms)"
    )
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    modes = args.modes.split(",")
    workloads: list[tuple[str, str | None, Callable[[], Coroutine[Any, Any, Stalls]]]] = [
        ("idle", None, lambda: idle_run(args.requests * args.ms / 1000))
    ]
    for mode in modes:
        for name, function in (("busy", busy), ("blocking", blocking)):
            workloads.append(
                (name, mode, functools.partial(one_run, function, args.requests, args.ms, mode))
            )
    for name, mode, run in workloads:
        runs = [asyncio.run(run()) for _ in range(args.runs)]
        print(json.dumps(_line(name, mode, runs, args)), flush=True)


def _line(
    name: str, mode: str | None, runs: list[Stalls], args: argparse.Namespace
) -> dict[str, Any]:
    """The JSON line of one workload: medians over runs, and the worst over all."""
    worst = [1000 * max(stalls) for stalls, _ in runs]
    p99 = [1000 * percentile(stalls, 0.99) for stalls, _ in runs]
    runs_ms = ", ".join(f"{w:.1f}" for w in worst)
    say(f"{name} ({mode or 'no grid'}): worst loop stall per run {runs_ms} ms")
    return {
        "bench": "loop_stall",
        "workload": name,
        "sync_offload": mode,
        "workers": 4,
        "requests": args.requests,
        "ms": args.ms,
        "runs": args.runs,
        "ticks": sum(len(stalls) for stalls, _ in runs),
        "worst_stall_ms": round(statistics.median(worst), 2),
        "worst_stall_range_ms": [round(min(worst), 2), round(max(worst), 2)],
        "p99_stall_ms": round(statistics.median(p99), 2),
        "p99_stall_range_ms": [round(min(p99), 2), round(max(p99), 2)],
        "max_stall_ms": round(max(worst), 2),
        "seconds": round(statistics.median(elapsed for _, elapsed in runs), 4),
        "switch_interval_ms": 1000 * sys.getswitchinterval(),
    }


if __name__ == "__main__":
    main()
