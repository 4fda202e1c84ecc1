"""Cache-aware chunking: the histogram of a byte range of a large file (seed 004's case), with
`girder.map_reduce` on the embedded grid, against plain numpy and Dask on the same range.

Each round writes nothing new: the file (256 MiB of random bytes by default) is written once
into a temporary folder and stays in the page cache. A round starts a fresh `Grid.local` (an
empty result cache) and times, in turn:

- `cold`: the histogram of `[1234, size - 16 MiB - 99)`, nothing cached;
- `overlap-warm`: then the histogram of `[8 MiB + 123, size - 77)`, which shares all but its
  last ~16 MiB (and its unaligned edges) with the cold range;

and, on the same two ranges in the same round, numpy alone (`np.bincount` over a memory map,
16 MiB at a time) and Dask (`dask.array.histogram` over the same memory map in 16 MiB chunks,
its default threaded scheduler). All three give the same counts (checked every round). One JSON
line per workload and system, medians over `--runs` rounds; `ratio_to_numpy` and
`ratio_to_dask` on girder's lines are its median time over theirs.

    .venv/bin/python benchmarks/chunking.py               # 256 MiB, 5 rounds
    .venv/bin/python benchmarks/chunking.py --mib 64 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dask
import dask.array as da
import numpy as np

import girder
from benchmarks.chunking_tasks import add_counts, byte_counts
from benchmarks.embedded import Report
from benchmarks.harness import say

MIB = 1 << 20
GIRDER, NUMPY, DASK = "girder-embedded", "numpy", "dask-array"


def write_file(path: Path, size: int) -> None:
    rng = np.random.default_rng(4)
    with path.open("wb") as file:
        for at in range(0, size, 16 * MIB):
            file.write(rng.integers(0, 256, min(16 * MIB, size - at), dtype=np.uint8).tobytes())


def numpy_counts(path: Path, lo: int, hi: int) -> Any:
    data = np.memmap(path, dtype=np.uint8, mode="r")
    counts = np.zeros(256, dtype=np.int64)
    for at in range(lo, hi, 16 * MIB):
        counts += np.bincount(data[at : min(at + 16 * MIB, hi)], minlength=256)
    return counts


def dask_counts(path: Path, lo: int, hi: int) -> Any:
    data = da.from_array(np.memmap(path, dtype=np.uint8, mode="r"), chunks=16 * MIB)
    counts, _ = da.histogram(data[lo:hi], bins=256, range=(0, 256))
    return counts.compute()


Timing = tuple[float, float]
"""Wall-clock and process CPU seconds (all threads: Dask's too)."""


def timed(work: Callable[[], Any]) -> tuple[Timing, Any]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    value = work()
    return (time.perf_counter() - wall, time.process_time() - cpu), value


async def timed_async(work: Callable[[], Any]) -> tuple[Timing, Any]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    value = await work()
    return (time.perf_counter() - wall, time.process_time() - cpu), value


async def one_round(
    path: Path, ranges: dict[str, tuple[int, int]], workers: int
) -> dict[str, dict[str, Timing]]:
    """Seconds per workload and system for one round (girder on a fresh grid)."""
    seconds: dict[str, dict[str, Timing]] = {name: {} for name in ranges}
    async with girder.Grid.local(workers=workers) as grid:
        source = girder.file_source(path)
        for name, (lo, hi) in ranges.items():  # cold first, then the overlapping one
            took, counts = await timed_async(
                lambda lo=lo, hi=hi: grid.map_reduce(byte_counts, add_counts, source, lo, hi)
            )
            seconds[name][GIRDER] = took
            expected = numpy_counts(path, lo, hi)
            assert np.array_equal(counts, expected), f"girder's {name} histogram is wrong"
    for name, (lo, hi) in ranges.items():
        seconds[name][NUMPY], _ = timed(lambda lo=lo, hi=hi: numpy_counts(path, lo, hi))
        seconds[name][DASK], counts = timed(lambda lo=lo, hi=hi: dask_counts(path, lo, hi))
        assert np.array_equal(counts, numpy_counts(path, lo, hi)), f"dask's {name} is wrong"
    return seconds


async def run(args: argparse.Namespace) -> None:
    size = args.mib * MIB
    ranges = {
        "cold": (1234, size - 16 * MIB - 99),
        "overlap-warm": (8 * MIB + 123, size - 77),
    }
    report = Report()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.bin"
        write_file(path, size)
        rounds = []
        for index in range(args.runs):
            rounds.append(await one_round(path, ranges, args.workers))
            say(
                f"round {index + 1}: "
                + ", ".join(
                    f"{name} {system} {took[0]:.3f} s"
                    for name, by_system in rounds[-1].items()
                    for system, took in by_system.items()
                )
            )
    for name, (lo, hi) in ranges.items():
        medians = {
            system: statistics.median(r[name][system][0] for r in rounds)
            for system in (GIRDER, NUMPY, DASK)
        }
        for system, median in medians.items():
            line: dict[str, Any] = {
                "workload": name,
                "system": system,
                "workers": args.workers if system == GIRDER else 0,
                "file_mib": args.mib,
                "range_mib": round((hi - lo) / MIB, 3),
                "runs": args.runs,
                "seconds": round(median, 6),
                "samples_seconds": [round(r[name][system][0], 6) for r in rounds],
                "cpu_seconds": round(statistics.median(r[name][system][1] for r in rounds), 6),
            }
            if system == GIRDER:
                line["ratio_to_numpy"] = round(median / medians[NUMPY], 4)
                line["ratio_to_dask"] = round(median / medians[DASK], 4)
            report.emit(bench="chunking", **line)
        say(f"{name}: " + ", ".join(f"{s} {m:.3f} s" for s, m in medians.items()))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB (at least 32)")
    parser.add_argument("--runs", type=int, default=5, help="rounds (medians are reported)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the embedded grid")
    args = parser.parse_args(argv)
    if args.mib < 32:
        parser.error("--mib must be at least 32 (the ranges leave 16 MiB at the end)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    dask.config.set(scheduler="threads")
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
