"""Which client a grid in one slot of a Redis Cluster should talk through, by measurement.

Starts a private Redis Cluster (3 primaries, a replica each) and runs the same trivial Lua script
(EVALSHA, one key: the grid's anchor) through:

- `resp-direct`: girder's `RedisClient` straight to the slot's primary (the floor: no routing);
- `girder-cluster`: girder's `ClusterClient` (`redis+cluster://`);
- `redis-py-cluster`: redis-py's `redis.asyncio.RedisCluster` (hiredis parser);
- `girder-cluster+wait`: girder's `ClusterClient`, each EVALSHA pipelined with `WAIT 1 1000`
  (the call returns once the replica has the write): the cost of synchronous replication.

One JSON line per client and mode: `sequential` (one call at a time: p50/p99 in us) and
`concurrent` (`--concurrency` callers: calls per second).

    .venv/bin/python benchmarks/cluster_client.py [--calls 5000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `girder` of this checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio.cluster import RedisCluster

from benchmarks.harness import percentile
from girder.backends.cluster import ClusterClient, parse_cluster_url
from girder.backends.resp import RedisClient, ServerAddress
from girder.testing.redis_cluster import RedisClusterServers

ANCHOR = "{girder}:leases"
SCRIPT = "return redis.call('INCR', KEYS[1])"

Call = Callable[[], Awaitable[Any]]


async def sequential(call: Call, calls: int) -> dict[str, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1e6)
    return {
        "p50_us": round(percentile(samples, 0.5), 1),
        "p99_us": round(percentile(samples, 0.99), 1),
    }


async def concurrent(call: Call, calls: int, concurrency: int) -> dict[str, float]:
    async def caller() -> None:
        for _ in range(calls // concurrency):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"calls_per_s": round(calls // concurrency * concurrency / elapsed)}


async def measure(url: str, owner_port: int, calls: int, concurrency: int) -> None:
    direct = RedisClient(ServerAddress(port=owner_port))
    sha = (await direct.execute("SCRIPT", "LOAD", SCRIPT)).decode()
    cluster = ClusterClient(parse_cluster_url(url), anchor=ANCHOR)
    redis_py = RedisCluster.from_url(url.replace("redis+cluster://", "redis://").split(",")[0])
    await redis_py.initialize()
    clients: dict[str, Call] = {
        "resp-direct": lambda: direct.execute("EVALSHA", sha, 1, ANCHOR),
        "girder-cluster": lambda: cluster.execute("EVALSHA", sha, 1, ANCHOR),
        "redis-py-cluster": lambda: redis_py.evalsha(sha, 1, ANCHOR),  # type: ignore[misc]
        "girder-cluster+wait": lambda: cluster.pipeline(
            [("EVALSHA", sha, 1, ANCHOR), ("WAIT", 1, 1000)]
        ),
    }
    try:
        for name, call in clients.items():
            await sequential(call, min(calls, 500))  # warm-up
            seq = await sequential(call, calls)
            conc = await concurrent(call, calls * 4, concurrency)
            line = {"bench": "cluster_client", "client": name, "calls": calls}
            line |= seq | conc | {"concurrency": concurrency}
            print(json.dumps(line), flush=True)
    finally:
        direct.close()
        cluster.close()
        await redis_py.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with RedisClusterServers() as servers:
        owner = servers.owner(servers.keyslot(ANCHOR))
        asyncio.run(measure(servers.url, owner.port, args.calls, args.concurrency))


if __name__ == "__main__":
    main()
