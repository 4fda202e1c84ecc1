"""Async I/O-bound grid functions on the embedded grid: do their waits overlap?

`requests` distinct requests of `io_wait(ms)` (each awaits `ms` milliseconds and computes
nothing) on `Grid.local(workers=4)` with the defaults, and, for contrast, with
`io_concurrency=0` (an `await` keeps its baton: one request per baton at a time). Each run uses a
fresh grid; the figure is the median wall-clock time of `grid.call_all` over the runs.

    .venv/bin/python benchmarks/io_bound.py [--runs 5] [--requests 200] [--ms 50]

One JSON line per configuration. Target (defaults): under 0.3 s for 200 requests of 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import girder
from benchmarks.harness import say
from benchmarks.workloads import io_wait


async def one_run(requests: int, ms: int, workers: int, io_concurrency: int | None) -> float:
    options = {} if io_concurrency is None else {"io_concurrency": io_concurrency}
    async with girder.Grid.local(workers=workers, **options) as grid:
        started = time.perf_counter()
        values = await grid.call_all([(io_wait, ms, index) for index in range(requests)])
        elapsed = time.perf_counter() - started
    if values != list(range(requests)):
        raise AssertionError("wrong values")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ms", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    for label, io_concurrency in (("default", None), ("io_concurrency=0", 0)):
        times = [
            asyncio.run(one_run(args.requests, args.ms, args.workers, io_concurrency))
            for _ in range(args.runs)
        ]
        median = statistics.median(times)
        say(f"{label}: {args.requests} requests of {args.ms} ms in {median:.3f} s (median)")
        line = {
            "bench": "io_bound",
            "settings": label,
            "workers": args.workers,
            "requests": args.requests,
            "ms": args.ms,
            "runs": args.runs,
            "seconds": round(median, 4),
            "seconds_all": [round(t, 4) for t in times],
            "ideal_seconds": args.ms / 1000,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
