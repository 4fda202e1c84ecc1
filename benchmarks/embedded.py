"""Benchmarks of the embedded grid (`Grid.local`, memory backend, one process, one event loop).

Workloads (see README.md):

- `tree(d)`: a binary tree of 2**(d+1) - 1 distinct re-entrant requests, on 1 and 4 workers,
  side by side with the same tree as one asyncio task per call (the baseline);
- `chain(n)`: a chain of re-entrant requests n deep on one worker: time, and traced memory per
  level at several depths (memory must be linear in the depth; no RecursionError);
- `cache-hit-call` / `cache-hit-reentrant`: `grid.call` and `girder.call_reentrant` on a key
  that is already cached.

Every measured configuration prints one JSON line on stdout (`bench`, `workload`, `system`,
`workers`, `requests`, `seconds` and `us_per_request` as medians over `runs`, and more); a
readable summary goes to stderr. Wall-clock times are the figures; CPU times (`cpu_*`) are
printed too because they are steadier on a shared machine.

    .venv/bin/python benchmarks/embedded.py                # full run (1-2 minutes here)
    .venv/bin/python benchmarks/embedded.py --gc on,off    # also with the cyclic GC off
    .venv/bin/python benchmarks/embedded.py --quick        # CI smoke run (a few seconds)
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
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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
    """Run the body with the cyclic GC on (the default), off, or with the heap frozen first."""
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


class Stopwatch:
    """Wall-clock and CPU (process) seconds of a block."""

    __slots__ = ("_cpu_start", "_wall_start", "cpu", "wall")

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._wall_start = self._cpu_start = 0.0

    def __enter__(self) -> Self:
        self._wall_start = time.perf_counter()
        self._cpu_start = time.process_time()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wall = time.perf_counter() - self._wall_start
        self.cpu = time.process_time() - self._cpu_start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rounded(values: Sequence[float], digits: int = 6) -> list[float]:
    return [round(v, digits) for v in values]


def tree_size(depth: int) -> int:
    return (1 << (depth + 1)) - 1


def timing_fields(walls: Sequence[float], cpus: Sequence[float], requests: int) -> dict[str, Any]:
    """The time fields every line has: medians over runs, per request, and the samples."""
    seconds, cpu = median(walls), median(cpus)
    return {
        "seconds": round(seconds, 6),
        "us_per_request": round(seconds / requests * 1e6, 3),
        "cpu_seconds": round(cpu, 6),
        "cpu_us_per_request": round(cpu / requests * 1e6, 3),
        "samples_seconds": rounded(walls),
    }


def source_version() -> tuple[str | None, bool | None]:
    """The git commit of the girder being measured, and whether `girder/` has changes."""
    root = Path(girder.__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--", "girder")
    return commit, (None if status is None else bool(status))


class Report:
    """Prints one JSON line per measured configuration, with the fields every line shares."""

    def __init__(self) -> None:
        commit, dirty = source_version()
        self.common: dict[str, Any] = {
            "python": platform.python_version(),
            "girder": girder.__version__,
            "commit": commit,
            "dirty": dirty,
            "cpus": os.cpu_count(),
            "date": datetime.date.today().isoformat(),
        }

    def emit(self, **fields: Any) -> None:
        line = {"bench": "embedded", **fields, **self.common}
        print(json.dumps(line), flush=True)

    @staticmethod
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)


# -- tree -------------------------------------------------------------------------------------


async def tree_girder(depth: int, workers: int, gc_mode: str) -> tuple[Stopwatch, list[int]]:
    """Times of tree(depth) on a fresh grid, and how many requests each worker ran."""
    async with girder.Grid.local(workers=workers) as grid:
        with collector(gc_mode), Stopwatch() as watch:
            value = await grid.call(tree, depth, 0)
        ran = [worker.stats.ran for worker in grid.workers]
    if value != tree_size(depth):
        raise AssertionError(f"tree({depth}) gave {value}, expected {tree_size(depth)}")
    return watch, ran


async def tree_asyncio(depth: int, gc_mode: str) -> Stopwatch:
    with collector(gc_mode), Stopwatch() as watch:
        value = await tree_tasks(depth, 0)
    if value != tree_size(depth):
        raise AssertionError(f"tree_tasks({depth}) gave {value}, expected {tree_size(depth)}")
    return watch


async def bench_tree(
    report: Report, depth: int, workers: Sequence[int], runs: int, gc_mode: str
) -> None:
    """tree(depth) on each worker count and as asyncio tasks, interleaved round by round."""
    systems: list[tuple[str, int]] = [(ASYNCIO, 0), *((GIRDER, w) for w in workers)]
    walls: dict[tuple[str, int], list[float]] = {system: [] for system in systems}
    cpus: dict[tuple[str, int], list[float]] = {system: [] for system in systems}
    ran: dict[int, list[int]] = {}
    for round_ in range(runs):
        # Rotate the order each round so that no system always runs first (or last).
        shift = round_ % len(systems)
        for system, count in systems[shift:] + systems[:shift]:
            if system == ASYNCIO:
                watch = await tree_asyncio(depth, gc_mode)
            else:
                watch, ran[count] = await tree_girder(depth, count, gc_mode)
            walls[system, count].append(watch.wall)
            cpus[system, count].append(watch.cpu)
    requests = tree_size(depth)
    baseline, cpu_baseline = median(walls[ASYNCIO, 0]), median(cpus[ASYNCIO, 0])
    for system, count in systems:
        fields = timing_fields(walls[system, count], cpus[system, count], requests)
        if system == GIRDER:
            per_round = [
                g / a for g, a in zip(walls[system, count], walls[ASYNCIO, 0], strict=True)
            ]
            fields |= {
                "ratio_to_asyncio": round(median(walls[system, count]) / baseline, 3),
                "cpu_ratio_to_asyncio": round(median(cpus[system, count]) / cpu_baseline, 3),
                "ratio_to_asyncio_per_round": rounded(per_round, 3),
                "ran_per_worker": ran[count],
            }
        report.emit(
            workload=f"tree({depth})",
            system=system,
            workers=count,
            requests=requests,
            runs=runs,
            gc=gc_mode,
            depth=depth,
            **fields,
        )
        label = f"{system} workers={count}" if count else system
        ratio = f"  x{fields['ratio_to_asyncio']:.2f} asyncio" if system == GIRDER else ""
        report.say(
            f"tree({depth}) gc={gc_mode:6} {label:28} {fields['us_per_request']:7.2f} us/request"
            f" (cpu {fields['cpu_us_per_request']:.2f}){ratio}"
        )


# -- chain ------------------------------------------------------------------------------------


async def chain_time(depth: int, gc_mode: str) -> Stopwatch:
    async with girder.Grid.local(workers=1) as grid:
        with collector(gc_mode), Stopwatch() as watch:
            value = await grid.call(chain, depth)
    if value != depth:
        raise AssertionError(f"chain({depth}) gave {value}")
    return watch


async def chain_memory(depth: int, gc_mode: str) -> tuple[int, int]:
    """Traced bytes of one chain(depth): the peak, and what is still held after (the cache)."""
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
    """Least-squares slope and intercept (a single point: through the origin)."""
    if len(xs) < 2:
        return (ys[0] / xs[0] if xs else 0.0), 0.0
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept


async def bench_chain(report: Report, depths: Sequence[int], runs: int, gc_mode: str) -> None:
    """chain(n) on one worker at several depths: time, and peak memory per level.

    Memory is measured in a separate run under tracemalloc (which slows everything down).
    """
    walls: dict[int, list[float]] = {depth: [] for depth in depths}
    cpus: dict[int, list[float]] = {depth: [] for depth in depths}
    for _ in range(runs):
        for depth in depths:
            watch = await chain_time(depth, gc_mode)
            walls[depth].append(watch.wall)
            cpus[depth].append(watch.cpu)
    memory = {depth: await chain_memory(depth, gc_mode) for depth in depths}
    slope, intercept = linear_fit(list(depths), [memory[d][0] for d in depths])
    for depth in depths:
        peak, held = memory[depth]
        fields = timing_fields(walls[depth], cpus[depth], depth + 1)
        report.emit(
            workload=f"chain({depth})",
            system=GIRDER,
            workers=1,
            requests=depth + 1,
            runs=runs,
            gc=gc_mode,
            depth=depth,
            **fields,
            peak_bytes=peak,
            peak_bytes_per_level=round(peak / depth),
            held_bytes=held,
            held_bytes_per_level=round(held / depth),
            fit_bytes_per_level=round(slope),
            fit_intercept_bytes=round(intercept),
            recursion_limit=sys.getrecursionlimit(),
        )
        report.say(
            f"chain({depth}) gc={gc_mode:6} {fields['seconds'] * 1e3:8.1f} ms"
            f" {fields['us_per_request']:7.2f} us/level  peak {peak / depth:6.0f} B/level"
            f" (held after: {held / depth:.0f} B/level; fit {slope:.0f} B/level)"
        )


# -- cache hits -------------------------------------------------------------------------------


async def cache_hit_call(calls: int, gc_mode: str) -> tuple[list[float], float]:
    """Seconds of each of `calls` `grid.call`s on a cached key, and CPU seconds of them all."""
    async with girder.Grid.local(workers=1) as grid:
        await grid.call(square, 7)
        clock = time.perf_counter
        samples = []
        with collector(gc_mode), Stopwatch() as watch:
            for _ in range(calls):
                start = clock()
                await grid.call(square, 7)
                samples.append(clock() - start)
    return samples, watch.cpu


async def cache_hit_reentrant(calls: int, gc_mode: str) -> tuple[list[float], float]:
    """Seconds of each of `calls` `call_reentrant`s on a cached key inside a grid function,
    and CPU seconds of them all."""
    async with girder.Grid.local(workers=1) as grid:
        with collector(gc_mode):
            samples, cpu = await grid.call(reentrant_hits, 7, calls)
    return samples, cpu


async def bench_cache(report: Report, calls: int, runs: int, gc_mode: str) -> None:
    """The headline figure is the median of single calls; `us_mean` is their total / calls."""
    for workload, measure in (
        ("cache-hit-call", cache_hit_call),
        ("cache-hit-reentrant", cache_hit_reentrant),
    ):
        measured = [await measure(calls, gc_mode) for _ in range(runs)]
        medians = [median(samples) for samples, _ in measured]
        fields = timing_fields(
            [sum(samples) for samples, _ in measured], [cpu for _, cpu in measured], calls
        )
        per_call = median(medians)
        mean = fields.pop("us_per_request")
        report.emit(
            workload=workload,
            system=GIRDER,
            workers=1,
            requests=calls,
            runs=runs,
            gc=gc_mode,
            **fields,
            us_per_request=round(per_call * 1e6, 3),
            us_mean=mean,
            us_p90=round(
                median([statistics.quantiles(samples, n=10)[-1] for samples, _ in measured]) * 1e6,
                3,
            ),
            us_per_run_median=rounded([m * 1e6 for m in medians], 3),
        )
        report.say(
            f"{workload:19} gc={gc_mode:6} {per_call * 1e6:7.2f} us/call (median of {calls}"
            f" calls x {runs} runs; mean {mean:.2f}, cpu {fields['cpu_us_per_request']:.2f})"
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
        "--workers",
        type=int_list,
        default=[1, 4],
        help="comma-separated girder worker counts for the tree (default 1,4)",
    )
    parser.add_argument(
        "--gc",
        default="on",
        help="comma-separated modes of the cyclic GC to run every workload under: on (the "
        "default), off (gc.disable()), freeze (gc.freeze() after a collection); e.g. on,off",
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
