"""Values per second through a three-stage topology (spout -> worker -> sink).

Three workloads in one run, each printed as one JSON line:

- `asyncio-queues`: the same pipeline as three asyncio tasks joined by bounded queues in one
  process, no girder at all (the floor: what coordination costs without a grid);
- `girder-memory`: `grid.run` on `Grid.local(workers=2)` (memory backend, one process);
- `girder-redis`: `grid.run` from a client on Redis, the stages on two `girder worker` processes.

Each worker value is one grid request (two per value here: the worker and the sink).

    .venv/bin/python benchmarks/topology.py [--values 2000] [--redis-values 1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.harness` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import girder
from benchmarks import topology_stages
from benchmarks.harness import Children, repo_env, say
from girder.backends import open_backend
from girder.backends.base import NodeKind
from girder.testing.redis_server import RedisServer

QUEUE_SIZE = 100
"""The floor's queues hold as many values as a stage's default `max_pending`."""


async def asyncio_floor(count: int) -> float:
    """The pipeline as asyncio tasks and bounded queues; seconds for `count` values."""
    first: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue(QUEUE_SIZE)
    second: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue(QUEUE_SIZE)

    async def source() -> None:
        for seq in range(count):
            await first.put((seq, seq))
        await first.put(None)

    async def stage(inbox: asyncio.Queue[tuple[int, int] | None], outbox: Any, step: Any) -> None:
        while (item := await inbox.get()) is not None:
            await outbox.put((item[0], step(item[1])))
        await outbox.put(None)

    out: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue(QUEUE_SIZE)
    start = time.perf_counter()
    tasks = [
        asyncio.create_task(source()),
        asyncio.create_task(stage(first, second, lambda v: 2 * v)),
        asyncio.create_task(stage(second, out, lambda v: v + 1)),
    ]
    received = 0
    while await out.get() is not None:
        received += 1
    elapsed = time.perf_counter() - start
    await asyncio.gather(*tasks)
    assert received == count
    return elapsed


async def through(grid: girder.Grid, count: int) -> float:
    """Seconds for `count` values through `pipeline` on `grid`."""
    topology_stages.VALUES["count"] = count
    start = time.perf_counter()
    received = sum([1 async for _ in grid.run(topology_stages.pipeline)])
    elapsed = time.perf_counter() - start
    assert received == count, received
    return elapsed


async def on_memory(count: int) -> float:
    async with girder.Grid.local(workers=2) as grid:
        return await through(grid, count)


async def on_redis(count: int) -> float:
    with RedisServer() as server, tempfile.TemporaryDirectory() as scratch:
        children = Children(repo_env(), Path(scratch))
        try:
            children.girder("distributor", "distributor", "--backend", server.url)
            for name in ("w1", "w2"):
                children.girder(
                    name, "worker", "--backend", server.url, "--name", name,
                    "--import", "benchmarks.topology_stages",
                )  # fmt: skip
            await _grid_ready(server.url)
            async with girder.Grid.connect(server.url) as grid:
                return await through(grid, count)
        finally:
            children.close()


async def _grid_ready(url: str) -> None:
    backend = open_backend(url)
    await backend.connect()
    try:
        deadline = time.monotonic() + 30
        while True:
            kinds = [n.kind for n in await backend.nodes() if n.alive]
            if kinds.count(NodeKind.WORKER) == 2 and NodeKind.DISTRIBUTOR in kinds:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the grid did not start within 30 s")
            await asyncio.sleep(0.05)
    finally:
        await backend.close()


def report(system: str, count: int, seconds: float, workers: int) -> None:
    line = {
        "bench": "topology",
        "workload": "spout-worker-sink",
        "system": system,
        "workers": workers,
        "values": count,
        "seconds": round(seconds, 4),
        "values_per_s": round(count / seconds, 1),
    }
    print(json.dumps(line), flush=True)
    say(f"{system:>15}: {line['values_per_s']:>10} values/s ({count} values)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=2000, help="values on memory and asyncio")
    parser.add_argument("--redis-values", type=int, default=1000, help="values on Redis")
    parser.add_argument("--quick", action="store_true", help="100 values each (a smoke run)")
    args = parser.parse_args()
    count = 100 if args.quick else args.values
    redis_count = 100 if args.quick else args.redis_values
    report("asyncio-queues", count, asyncio.run(asyncio_floor(count)), 0)
    report("girder-memory", count, asyncio.run(on_memory(count)), 2)
    report("girder-redis", redis_count, asyncio.run(on_redis(redis_count)), 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
