"""How a grid's memory and Redis CPU spread over a Redis Cluster's primaries: by the size from
which values become blobs (`large_value_bytes`, GIRDER_LARGE_VALUE_BYTES), and with cached
results moved to their own keys' slots (`spread_results`, GIRDER_SPREAD_RESULTS).

A grid keeps its state in one slot of the cluster (one primary at a time), but the bytes of a
blob live in the slot of their digest, and with `spread_results` a cached result moves to the
slot of its key. This runs the same grid job in the cases of `--cases`: `one-slot` (the
defaults), `blobs` (`large_value_bytes` = `--spread-from`: values of `--size` bytes over it
become blobs) and `results` (`spread_results`), on a private cluster of 3 primaries
(`girder.testing.redis_cluster`, no replicas: their replication would share the 2 cores), a
distributor and a worker in this process and a client (`Grid.connect`):

- `call_all` of `--requests` requests of `blob_result(--size)`, distinct values: the wall time
  (for `results`, without the moves of the cached results, which go on in the background);
- then every primary's growth of `used_memory` (the cached results and their blobs) and the
  Redis CPU (`used_cpu_sys` + `used_cpu_user`) each spent during the calls (and the moves,
  waited for);
- `call_all` again: every value cached, fetched back (from the record, its blob, or its own
  slot), and the CPU each primary spent on that.

The cases alternate over `--runs` rounds on a flushed grid; one JSON line per case and round,
then one per case with the medians.

    .venv/bin/python benchmarks/value_spread.py [--requests 300] [--size 65536] [--runs 3]
        [--cases one-slot,blobs]
    .venv/bin/python benchmarks/value_spread.py --size 100 --requests 3000 --cases one-slot,results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `girder` of this checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import girder
from benchmarks.harness import fresh_tag, grid_secret, say
from benchmarks.workloads import blob_result
from girder.backends.redis import RedisBackend
from girder.config import load_settings
from girder.scheduler import Distributor, Worker
from girder.testing.redis_cluster import RedisClusterServers

_PREFIX = "spread"


def _primaries(servers: RedisClusterServers) -> dict[int, tuple[int, float]]:
    """Per primary (by port): `used_memory` and the CPU seconds it has used."""
    figures = {}
    for server in servers.primaries():
        memory, cpu = server.info("memory"), server.info("cpu")
        used_cpu = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        figures[server.port] = (int(memory["used_memory"]), used_cpu)
    return figures


async def _case(
    servers: RedisClusterServers, options: dict[str, Any], requests: int, size: int
) -> dict[str, Any]:
    options = {"key_prefix": _PREFIX, "secret": grid_secret(), **options}
    settings = load_settings(backend=servers.url, **options)
    backend = RedisBackend(servers.url, settings=settings)
    await backend.connect()
    distributor = Distributor(backend, settings)
    worker = Worker(backend, settings, node_id="spread-w1")
    await distributor.start()
    await worker.start()
    tag = fresh_tag("spread")
    calls = [girder.Request(blob_result, size, f"{tag}-{index}") for index in range(requests)]
    try:
        async with girder.Grid.connect(servers.url, **options) as grid:
            before = _primaries(servers)
            started = time.perf_counter()
            values = await grid.call_all(calls)
            seconds = time.perf_counter() - started
            if backend._results is not None:
                await backend._results.settled()  # the moves' CPU is part of the cost
            after = _primaries(servers)
            assert all(len(value) == size for value in values)
            started = time.perf_counter()
            again = await grid.call_all(calls)
            cached_seconds = time.perf_counter() - started
            reread = _primaries(servers)
            assert again == values
    finally:
        await worker.stop()
        await distributor.stop()
        await backend.flush()
        await backend.close()
    memory = sorted((after[p][0] - before[p][0] for p in before), reverse=True)
    cpu = sorted((after[p][1] - before[p][1] for p in before), reverse=True)
    reread_cpu = sorted((reread[p][1] - after[p][1] for p in before), reverse=True)
    return {
        "seconds": round(seconds, 3),
        "calls_per_s": round(requests / seconds),
        "cached_seconds": round(cached_seconds, 3),
        "memory_per_primary": memory,
        "largest_memory_share": round(memory[0] / max(1, sum(memory)), 3),
        "memory_total": sum(memory),
        "cpu_ms_per_primary": [round(c * 1000, 1) for c in cpu],
        "cpu_us_per_request": round(sum(cpu) / requests * 1e6, 1),
        "cached_cpu_ms_per_primary": [round(c * 1000, 1) for c in reread_cpu],
        "cached_cpu_us_per_request": round(sum(reread_cpu) / requests * 1e6, 1),
    }


def _emit(case: str, options: dict[str, Any], args: argparse.Namespace, **fields: object) -> None:
    line = {"bench": "value_spread", "case": case, **options}
    line |= {"requests": args.requests, "size": args.size}
    print(json.dumps(line | fields), flush=True)


async def _run(servers: RedisClusterServers, args: argparse.Namespace) -> None:
    known: dict[str, dict[str, Any]] = {
        "one-slot": {},
        "blobs": {"large_value_bytes": args.spread_from},
        "results": {"spread_results": True},
    }
    cases = {case: known[case] for case in args.cases.split(",")}
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    for round_ in range(args.runs):
        for case, options in cases.items():
            figures = await _case(servers, options, args.requests, args.size)
            results[case].append(figures)
            _emit(case, options, args, round=round_, **figures)
            say(f"{case:8} round {round_}: {figures}")
    for case, options in cases.items():
        runs = results[case]
        names = ("seconds", "calls_per_s", "cached_seconds", "largest_memory_share")
        names += ("memory_total", "cpu_us_per_request", "cached_cpu_us_per_request")
        medians = {name: statistics.median(run[name] for run in runs) for name in names}
        _emit(case, options, args, runs=len(runs), median=medians)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--spread-from", type=int, default=16 * 1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--cases", default="one-slot,blobs", help="of one-slot, blobs, results (comma-separated)"
    )
    args = parser.parse_args()
    with RedisClusterServers(replicas=0) as servers:
        asyncio.run(_run(servers, args))


if __name__ == "__main__":
    main()
