"""Benchmarks of the embedded grid (`Grid.local`, memory backend, one process, one event loop).

Workloads (see README.md):

- `tree`: a binary tree of distinct re-entrant requests, on 1 and 4 workers, side by side with
  the same tree as one asyncio task per call (the baseline);
- `chain`: a chain of re-entrant requests n deep on one worker: time, and traced memory per level;
- `cache-hit-call` / `cache-hit-reentrant`: `grid.call` and `girder.call_reentrant` on a key that
  is already cached.

Every measured configuration prints one JSON line on stdout; a readable summary goes to stderr.

    .venv/bin/python benchmarks/embedded.py              # full run (about 2-3 minutes)
    .venv/bin/python benchmarks/embedded.py --quick      # CI smoke run (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.workloads` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import girder
from benchmarks.workloads import chain, reentrant_hits, square, tree, tree_tasks

GC_MODES = ("on", "off", "freeze")
GIRDER = "girder-embedded"
ASYNCIO = "asyncio-tasks"


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def collector(mode: str) -> Iterator[None]:
    """Run the body with the cyclic GC on (the default), off, or with the heap frozen."""
    gc.collect()
    if mode == "off":
        gc.disable()
    elif mode == "freeze":
        gc.freeze()
    try:
        yield
    finally:
        gc.enable()
        if mode == "freeze":
            gc.unfreeze()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def tree_size(depth: int) -> int:
    return 2 ** (depth + 1) - 1


class Report:
    """Prints one JSON line per measured configuration, with the fields every line shares."""

    def __init__(self) -> None:
        self.common: dict[str, Any] = {
            "bench": "embedded",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "date": datetime.date.today().isoformat(),
        }

    def emit(self, **fields: Any) -> None:
        line = {"bench": self.common["bench"], **fields}
        line.update({k: v for k, v in self.common.items() if k not in line})
        print(json.dumps(line), flush=True)

    @staticmethod
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def rounded(values: Sequence[float], digits: int = 6) -> list[float]:
    return [round(v, digits) for v in values]


# -- tree -------------------------------------------------------------------------------------


async def tree_girder(depth: int, workers: int, gc_mode: str) -> tuple[float, list[int]]:
    """Seconds for tree(depth) on a fresh grid, and how many requests each worker ran."""
    async with girder.Grid.local(workers=workers) as grid:
        with collector(gc_mode):
            start = time.perf_counter()
            value = await grid.call(tree, depth, 0)
            elapsed = time.perf_counter() - start
        ran = [worker.stats.ran for worker in grid.workers]
    if value != tree_size(depth):
        raise AssertionError(f"tree({depth}) gave {value}, expected {tree_size(depth)}")
    return elapsed, ran


async def tree_asyncio(depth: int, gc_mode: str) -> float:
    with collector(gc_mode):
        start = time.perf_counter()
        value = await tree_tasks(depth, 0)
        elapsed = time.perf_counter() - start
    if value != tree_size(depth):
        raise AssertionError(f"tree_tasks({depth}) gave {value}, expected {tree_size(depth)}")
    return elapsed


async def bench_tree(
    report: Report, depth: int, workers: Sequence[int], runs: int, gc_mode: str
) -> None:
    """tree(depth) on each worker count and as asyncio tasks, interleaved round by round."""
    systems: list[tuple[str, int]] = [(ASYNCIO, 0), *((GIRDER, w) for w in workers)]
    samples: dict[tuple[str, int], list[float]] = {system: [] for system in systems}
    ran: dict[int, list[int]] = {}
    for round_ in range(runs):
        # Rotate the order each round so no system always runs on a warmer (or noisier) heap.
        shift = round_ % len(systems)
        for system, count in systems[shift:] + systems[:shift]:
            if system == ASYNCIO:
                elapsed = await tree_asyncio(depth, gc_mode)
            else:
                elapsed, ran[count] = await tree_girder(depth, count, gc_mode)
            samples[system, count].append(elapsed)
    requests = tree_size(depth)
    baseline = median(samples[ASYNCIO, 0])
    for system, count in systems:
        seconds = median(samples[system, count])
        fields: dict[str, Any] = {}
        if system == GIRDER:
            per_round = [
                g / a for g, a in zip(samples[system, count], samples[ASYNCIO, 0], strict=True)
            ]
            fields = {
                "ratio_to_asyncio": round(seconds / baseline, 3),
                "ratio_to_asyncio_per_round": rounded(per_round, 3),
                "ran_per_worker": ran[count],
            }
        report.emit(
            workload=f"tree({depth})",
            system=system,
            workers=count,
            requests=requests,
            seconds=round(seconds, 6),
            us_per_request=round(seconds / requests * 1e6, 3),
            runs=runs,
            gc=gc_mode,
            depth=depth,
            samples_seconds=rounded(samples[system, count]),
            **fields,
        )
        ratio = f"  x{fields['ratio_to_asyncio']:.2f} asyncio" if fields else ""
        label = f"{system} workers={count}" if count else system
        report.say(
            f"tree({depth}) gc={gc_mode:6} {label:28} {seconds / requests * 1e6:7.2f} us/request"
            f"{ratio}"
        )


# -- chain ------------------------------------------------------------------------------------


async def chain_time(depth: int, gc_mode: str) -> float:
    async with girder.Grid.local(workers=1) as grid:
        with collector(gc_mode):
            start = time.perf_counter()
            value = await grid.call(chain, depth)
            elapsed = time.perf_counter() - start
    if value != depth:
        raise AssertionError(f"chain({depth}) gave {value}")
    return elapsed


async def chain_memory(depth: int, gc_mode: str) -> tuple[int, int]:
    """Traced bytes of one chain(depth): (peak, still held after it, i.e. the cache)."""
    async with girder.Grid.local(workers=1) as grid:
        with collector(gc_mode):
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                await grid.call(chain, depth)
                current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    return peak - base, current - base


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    if len(xs) < 2:
        return (ys[0] / xs[0] if xs else 0.0), 0.0
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept


async def bench_chain(report: Report, depths: Sequence[int], runs: int, gc_mode: str) -> None:
    """chain(n) on one worker at several depths: time, and peak memory per level."""
    times: dict[int, list[float]] = {depth: [] for depth in depths}
    for _ in range(runs):
        for depth in depths:
            times[depth].append(await chain_time(depth, gc_mode))
    memory = {depth: await chain_memory(depth, gc_mode) for depth in depths}
    slope, intercept = linear_fit(list(depths), [memory[d][0] for d in depths])
    for depth in depths:
        seconds = median(times[depth])
        peak, held = memory[depth]
        requests = depth + 1
        report.emit(
            workload=f"chain({depth})",
            system=GIRDER,
            workers=1,
            requests=requests,
            seconds=round(seconds, 6),
            us_per_request=round(seconds / requests * 1e6, 3),
            runs=runs,
            gc=gc_mode,
            depth=depth,
            samples_seconds=rounded(times[depth]),
            peak_bytes=peak,
            peak_bytes_per_level=round(peak / depth),
            held_bytes=held,
            held_bytes_per_level=round(held / depth),
            fit_bytes_per_level=round(slope),
            fit_intercept_bytes=round(intercept),
            recursion_limit=sys.getrecursionlimit(),
        )
        report.say(
            f"chain({depth}) gc={gc_mode:6} {seconds * 1e3:8.1f} ms"
            f" {seconds / requests * 1e6:7.2f} us/level  peak {peak / depth:6.0f} B/level"
            f" (held after: {held / depth:.0f} B/level; fit {slope:.0f} B/level)"
        )


# -- cache hits -------------------------------------------------------------------------------


async def cache_hit_call(calls: int, gc_mode: str) -> list[float]:
    """Seconds of each of `calls` `grid.call`s on a cached key."""
    async with girder.Grid.local(workers=1) as grid:
        await grid.call(square, 7)
        clock = time.perf_counter
        samples = []
        with collector(gc_mode):
            for _ in range(calls):
                start = clock()
                await grid.call(square, 7)
                samples.append(clock() - start)
    return samples


async def cache_hit_reentrant(calls: int, gc_mode: str) -> list[float]:
    """Seconds of each of `calls` `call_reentrant`s on a cached key, inside a grid function."""
    async with girder.Grid.local(workers=1) as grid:
        with collector(gc_mode):
            samples: list[float] = await grid.call(reentrant_hits, 7, calls)
    return samples


async def bench_cache(report: Report, calls: int, runs: int, gc_mode: str) -> None:
    for workload, measure in (
        ("cache-hit-call", cache_hit_call),
        ("cache-hit-reentrant", cache_hit_reentrant),
    ):
        per_run = [await measure(calls, gc_mode) for _ in range(runs)]
        totals = [sum(samples) for samples in per_run]
        medians = [median(samples) for samples in per_run]
        per_call = median(medians)
        report.emit(
            workload=workload,
            system=GIRDER,
            workers=1,
            requests=calls,
            seconds=round(median(totals), 6),
            us_per_request=round(per_call * 1e6, 3),
            runs=runs,
            gc=gc_mode,
            us_mean=round(median(totals) / calls * 1e6, 3),
            us_p90=round(
                median([statistics.quantiles(s, n=10)[-1] for s in per_run]) * 1e6,
                3,
            ),
            us_per_run_median=rounded([m * 1e6 for m in medians], 3),
        )
        report.say(
            f"{workload:19} gc={gc_mode:6} {per_call * 1e6:7.2f} us/call (median of {calls} calls,"
            f" mean {median(totals) / calls * 1e6:.2f})"
        )


# -- main -------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmarks of the embedded girder grid; one JSON line per configuration."
    )
    parser.add_argument("--runs", type=int, default=5, help="measured runs per configuration")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes for a CI smoke run (tree(10), chain(500))"
    )
    parser.add_argument("--depth", type=int, help="tree depth (default 16; 10 with --quick)")
    parser.add_argument(
        "--chain-depths",
        type=int_list,
        help="comma-separated chain depths (default 1000,2000,5000; 100,250,500 with --quick)",
    )
    parser.add_argument(
        "--calls", type=int, help="calls per cache-hit run (default 5000; 500 with --quick)"
    )
    parser.add_argument(
        "--workers", type=int_list, default=[1, 4], help="girder worker counts for the tree"
    )
    parser.add_argument(
        "--gc",
        default="on,off",
        help="comma-separated GC modes to run every workload under: on, off, freeze "
        "(default on,off)",
    )
    parser.add_argument(
        "--workloads",
        default="tree,chain,cache",
        help="comma-separated subset of tree, chain, cache (default: all)",
    )
    args = parser.parse_args(argv)
    args.gc_modes = [mode for mode in args.gc.split(",") if mode]
    for mode in args.gc_modes:
        if mode not in GC_MODES:
            parser.error(f"unknown GC mode {mode!r}; choose from {', '.join(GC_MODES)}")
    args.workload_set = {name for name in args.workloads.split(",") if name}
    if unknown := args.workload_set - {"tree", "chain", "cache"}:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.depth is None:
        args.depth = 10 if args.quick else 16
    if args.chain_depths is None:
        args.chain_depths = [100, 250, 500] if args.quick else [1000, 2000, 5000]
    if args.calls is None:
        args.calls = 500 if args.quick else 5000
    return args


async def run(args: argparse.Namespace) -> None:
    report = Report()
    for gc_mode in args.gc_modes:
        if "tree" in args.workload_set:
            await bench_tree(report, args.depth, args.workers, args.runs, gc_mode)
        if "chain" in args.workload_set:
            await bench_chain(report, args.chain_depths, args.runs, gc_mode)
        if "cache" in args.workload_set:
            await bench_cache(report, args.calls, args.runs, gc_mode)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    asyncio.run(run(args))
    Report.say(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
