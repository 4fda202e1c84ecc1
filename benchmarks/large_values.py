"""Large values between processes: a worker returns 1, 10 and 100 MiB, a client receives them.

Workloads (one JSON line each, per backend and size):

- `result` on `redis`: a throw-away redis-server, a `girder distributor` and one `girder worker`
  process, and a client in this process (`Grid.connect`). The worker makes the value, pickles it,
  hashes it (SHA-256), stores the blob in 8 MiB parts and completes the request with a reference;
  the client fetches the blob in parts, checks its digest and unpickles it. Time from `grid.call`
  to the value in hand.
- `result` on `memory`: `Grid.local(workers=1)` in this process. The value reaches the caller in
  memory; what is timed is the making, pickling, hashing and storing of the blob.
- `floor` on `redis`: the same number of bytes written (SET) and read back (GET) by this process
  through girder's Redis client, in one command each: what moving the bytes costs at least.

Every call uses a fresh tag, so nothing comes from the cache or an earlier blob. Each line has
`bench`, `workload`, `backend`, `mib`, `runs`, `seconds` (median), `mib_per_s`, and `samples`.

    .venv/bin/python benchmarks/large_values.py            # 1, 10, 100 MiB, 5 runs each
    .venv/bin/python benchmarks/large_values.py --sizes 1,10 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import girder
from benchmarks.harness import Children, fresh_tag, repo_env, say
from benchmarks.workloads import blob_result
from girder.backends import open_backend
from girder.backends.base import NodeKind
from girder.backends.resp import RedisClient, parse_url
from girder.testing.redis_server import RedisServer

MIB = 1024 * 1024


def line(workload: str, backend: str, mib: int, samples: list[float]) -> dict[str, object]:
    seconds = statistics.median(samples)
    figures: dict[str, object] = {
        "bench": "large_values",
        "workload": workload,
        "backend": backend,
        "mib": mib,
        "runs": len(samples),
        "seconds": round(seconds, 4),
        "mib_per_s": round(mib / seconds, 1),
        "samples": [round(s, 4) for s in samples],
    }
    print(json.dumps(figures), flush=True)
    rate = mib / seconds
    say(f"{workload:6} {backend:6} {mib:4} MiB: {seconds * 1000:8.1f} ms, {rate:7.1f} MiB/s")
    return figures


async def timed(runs: int, once: Callable[[], Awaitable[None]]) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await once()
        samples.append(time.perf_counter() - started)
    return samples


async def results(grid: girder.Grid, backend: str, sizes: list[int], runs: int) -> None:
    for mib in sizes:

        async def once(mib: int = mib) -> None:
            value = await grid.call(blob_result, mib * MIB, fresh_tag("blob"))
            assert len(value) == mib * MIB

        await once()  # warm-up
        line("result", backend, mib, await timed(runs, once))


async def floor(url: str, sizes: list[int], runs: int) -> None:
    client = RedisClient(parse_url(url))
    try:
        for mib in sizes:
            data = bytes(mib * MIB)

            async def once(data: bytes = data) -> None:
                await client.execute("SET", "floor", data)
                assert len(await client.execute("GET", "floor")) == len(data)

            await once()
            line("floor", "redis", mib, await timed(runs, once))
        await client.execute("DEL", "floor")
    finally:
        client.close()


async def on_redis(sizes: list[int], runs: int) -> None:
    with RedisServer() as server, tempfile.TemporaryDirectory() as scratch:
        children = Children(repo_env(), Path(scratch))
        try:
            children.girder("distributor", "distributor", "--backend", server.url)
            children.girder(
                "w1", "worker", "--backend", server.url, "--name", "w1",
                "--import", "benchmarks.workloads",
            )  # fmt: skip
            await wait_for_grid(server.url)
            await floor(server.url, sizes, runs)
            async with girder.Grid.connect(server.url) as grid:
                await results(grid, "redis", sizes, runs)
        finally:
            children.close()


async def wait_for_grid(url: str) -> None:
    backend = open_backend(url)
    await backend.connect()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kinds = [n.kind for n in await backend.nodes() if n.alive]
            if NodeKind.WORKER in kinds and NodeKind.DISTRIBUTOR in kinds:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the grid did not start within 60 s")
    finally:
        await backend.close()


async def on_memory(sizes: list[int], runs: int) -> None:
    async with girder.Grid.local(workers=1) as grid:
        await results(grid, "memory", sizes, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="1,10,100", help="MiB, comma-separated")
    parser.add_argument("--backends", default="redis,memory")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    backends = args.backends.split(",")
    if "redis" in backends:
        asyncio.run(on_redis(sizes, args.runs))
    if "memory" in backends:
        asyncio.run(on_memory(sizes, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
