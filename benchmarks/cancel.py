"""How fast a cancellation reaches every coroutine it stops, on Redis with worker processes.

A tree of 1,000 sleeping leaves (`sleepy(3, 10, ...)` of `benchmarks/remote_tasks.py`) runs on two
`girder worker` processes with enough batons for every leaf to sleep at once; once every leaf
sleeps, the client cancels the job. Each coroutine (leaves and parked parents) writes the time it
stopped; the figure is, per run, the delay from `cancel()` to each stop: p50 and max (the last
one to stop).

    .venv/bin/python benchmarks/cancel.py [--runs 5] [--fanout 10] [--depth 3]

One JSON line per run and one for the medians over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.harness` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import girder
from benchmarks.harness import Children, percentile, repo_env, say
from benchmarks.remote_tasks import sleepy
from girder.backends import open_backend
from girder.backends.base import NodeKind
from girder.testing.redis_server import RedisServer


async def _wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern))


def _stop_times(folder: Path) -> list[float]:
    return [float(path.read_text()) for path in folder.glob("stop-*")]


async def one_run(url: str, depth: int, fanout: int, folder: Path) -> dict[str, float]:
    leaves = fanout**depth
    async with girder.Grid.connect(url) as grid:
        handle = grid.submit(sleepy, depth, fanout, 0, folder.name, str(folder))

        async def all_asleep() -> bool:
            return _count(folder, "start-*") >= leaves

        await _wait(all_asleep, 120, f"{leaves} leaves asleep")
        cancelled_at = time.time()
        handle.cancel()
        started = _count(folder, "start-*")
        coroutines = started + sum(fanout**level for level in range(depth))

        async def all_stopped() -> bool:
            return _count(folder, "stop-*") >= coroutines

        await _wait(all_stopped, 120, f"{coroutines} coroutines stopped")
    delays = sorted(stopped - cancelled_at for stopped in _stop_times(folder))
    return {
        "coroutines": len(delays),
        "p50_ms": round(1000 * percentile(delays, 0.5), 1),
        "max_ms": round(1000 * delays[-1], 1),
    }


async def measure(runs: int, depth: int, fanout: int) -> list[dict[str, object]]:
    leaves = fanout**depth
    with RedisServer() as server, tempfile.TemporaryDirectory() as scratch:
        logs = Path(scratch)
        children = Children(repo_env(), logs)
        try:
            children.girder("distributor", "distributor", "--backend", server.url)
            for name in ("w1", "w2"):
                children.girder(
                    name, "worker", "--backend", server.url, "--name", name,
                    "--import", "benchmarks.remote_tasks", "--concurrency", str(leaves),
                )  # fmt: skip
            backend = open_backend(server.url)
            await backend.connect()

            async def ready() -> bool:
                kinds = [n.kind for n in await backend.nodes() if n.alive]
                return kinds.count(NodeKind.WORKER) == 2 and NodeKind.DISTRIBUTOR in kinds

            await _wait(ready, 30, "the grid")
            await backend.close()
            lines: list[dict[str, object]] = []
            for run in range(runs):
                folder = logs / f"run-{run}"
                folder.mkdir()
                figures = await one_run(server.url, depth, fanout, folder)
                line = {"bench": "cancel", "leaves": leaves, "run": run, **figures}
                print(json.dumps(line), flush=True)
                lines.append(line)
            return lines
        finally:
            children.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--fanout", type=int, default=10)
    args = parser.parse_args()
    lines = asyncio.run(measure(args.runs, args.depth, args.fanout))
    summary = {
        "bench": "cancel",
        "leaves": args.fanout**args.depth,
        "runs": len(lines),
        "median_p50_ms": statistics.median(float(str(line["p50_ms"])) for line in lines),
        "median_max_ms": statistics.median(float(str(line["max_ms"])) for line in lines),
        "worst_max_ms": max(float(str(line["max_ms"])) for line in lines),
    }
    print(json.dumps(summary))
    say(f"cancel: p50 {summary['median_p50_ms']} ms, max {summary['median_max_ms']} ms (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
