"""Where a grid's blobs live on a Redis Cluster, and what their put and get cost, by measurement.

Starts a private Redis Cluster (3 primaries, a replica each), stores `--blobs` blobs of
`--size` bytes through `RedisBackend` (`redis+cluster://`), and prints one JSON line per
workload:

- `memory`: the growth of each primary's `used_memory` (bytes), largest and total;
- `put_new`, `put_again` (the blob is stored: only its holder travels), `get`: p50/p99 in us,
  one call at a time;
- `sweep`: the time to sweep every blob once its holders are gone (ms).

The layout is that of the `girder` it imports: this checkout (bytes spread over the slots by
digest) or, run with `PYTHONPATH=<an older checkout>`, one where every blob is in the grid's
slot; the `layout` field says which.

    .venv/bin/python benchmarks/blob_spread.py [--blobs 300] [--size 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: `girder` from PYTHONPATH first, else here
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import percentile
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.testing.redis_cluster import RedisClusterServers

LAYOUT = "spread" if importlib.util.find_spec("girder.backends.redis_blobs") else "one-slot"


def blob(index: int, size: int) -> tuple[str, bytes]:
    data = index.to_bytes(8, "big") * (size // 8 + 1)
    data = data[:size]
    return hashlib.sha256(data).hexdigest(), data


async def timed(calls: list[Callable[[], Awaitable[object]]]) -> dict[str, float]:
    samples = []
    for call in calls:
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1e6)
    return {
        "p50_us": round(percentile(samples, 0.5), 1),
        "p99_us": round(percentile(samples, 0.99), 1),
    }


def used_memory(servers: RedisClusterServers) -> dict[int, int]:
    return {s.port: int(s.info("memory")["used_memory"]) for s in servers.primaries()}


def emit(workload: str, blobs: int, size: int, **fields: object) -> None:
    line = {"bench": "blob_spread", "layout": LAYOUT, "workload": workload}
    print(json.dumps(line | {"blobs": blobs, "size": size} | fields), flush=True)


async def measure(servers: RedisClusterServers, count: int, size: int) -> None:
    backend = RedisBackend(servers.url, settings=Settings(key_prefix="bench"))
    await backend.connect()
    stored = [blob(index, size) for index in range(count)]
    try:
        before = used_memory(servers)
        put_new = await timed(
            [lambda d=digest, b=data: backend.put_blob(d, b, holder="k") for digest, data in stored]
        )
        after = used_memory(servers)
        growth = sorted((after[port] - before[port] for port in before), reverse=True)
        emit("memory", count, size, per_primary=growth, largest=growth[0], total=sum(growth))
        emit("put_new", count, size, **put_new)
        again = [
            lambda d=digest, b=data: backend.put_blob(d, b, holder="k2") for digest, data in stored
        ]
        emit("put_again", count, size, **await timed(again))
        emit(
            "get", count, size, **await timed([lambda d=d: backend.get_blob(d) for d, _ in stored])
        )
        started = time.perf_counter()
        deleted = await backend.sweep_blobs(0)  # no holder has a record: every blob goes
        sweep_ms = round((time.perf_counter() - started) * 1000, 1)
        emit("sweep", count, size, deleted=deleted, ms=sweep_ms)
    finally:
        await backend.flush()
        await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=300)
    parser.add_argument("--size", type=int, default=100_000)
    args = parser.parse_args()
    with RedisClusterServers() as servers:
        asyncio.run(measure(servers, args.blobs, args.size))


if __name__ == "__main__":
    main()
