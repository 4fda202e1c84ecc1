"""What publishing grid events costs Redis: the server's own time per request, events on and off.

A private `redis-server` runs the hot path of W1 and W2 without worker processes, so that the
machine's noise weighs as little as possible: a client submits requests (alone, as W1 does, or
`--batch` at once, as W2 does) and a worker claims and completes them with
`complete_and_claim`: one request a call on the W1 path, up to 32 on the W2 path (as a worker
takes quick sync requests). Redis's `INFO commandstats` gives the
microseconds its scripts took; per request, with `Settings.events` on while a reader watches
(`watched`: it read the events just before), on with nobody reading (`unwatched`: nothing is
published) and off, alternating round by round (`--rounds`), medians of the rounds.

    .venv/bin/python benchmarks/events_cost.py [--requests 5000] [--batch 250] [--rounds 7]

One JSON line per workload and setting: `workload`, `events` (watched, unwatched or off),
`server_us_per_request` (median),
`wall_us_per_request` (median; this process and Redis on one machine), and the per-round values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `girder` of this checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from girder.backends.base import Completion, NewRequest, NodeKind
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.testing.redis_server import RedisServer

_PAYLOAD = b"\x01" + bytes(100)
"""About the size of a small signed request payload."""


async def _script_usec(raw: aioredis.Redis) -> float:
    stats = await raw.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def _run(backend: RedisBackend, requests: int, batch: int, claim: int) -> None:
    """`requests` requests from submission to completion, `batch` submitted at once, `claim`
    claimed (and then completed) per call."""
    tag = uuid.uuid4().hex[:8]
    for start in range(0, requests, batch):
        keys = [f"{tag}-{index}" for index in range(start, min(requests, start + batch))]
        await backend.submit(
            "client",
            [NewRequest(key, _PAYLOAD, "echo") for key in keys],
            into="worker",
            on_top=False,
            job=f"job-{start}",
        )
        claimed = await backend.complete_and_claim("worker", [], claim=claim)
        while claimed:
            done = [Completion(request.key, b"\x02outcome", True) for request in claimed]
            claimed = await backend.complete_and_claim("worker", done, claim=claim)


_SETTINGS = {"watched": True, "unwatched": True, "off": False}
"""Each setting's `Settings.events`; `watched` also reads the events before each round."""


async def measure(requests: int, batch: int, rounds: int) -> list[dict[str, object]]:
    lines = []
    with RedisServer() as server:
        raw = aioredis.Redis.from_url(server.url)
        backends = {
            name: RedisBackend(server.url, settings=Settings(events=on, key_prefix=f"b{name}"))
            for name, on in _SETTINGS.items()
        }
        for backend in backends.values():
            await backend.connect()
            await backend.join("worker", NodeKind.WORKER, None, 3600)
        for workload, size, claim in (("W1-path", 1, 1), ("W2-path", batch, 32)):
            count = requests // 5 if size == 1 else requests
            server_us: dict[str, list[float]] = {name: [] for name in backends}
            wall_us: dict[str, list[float]] = {name: [] for name in backends}
            for _ in range(rounds):
                for name, backend in backends.items():
                    if name == "watched":
                        await backend.events(None, 0)  # as a dashboard does, 4 times a second
                    before, started = await _script_usec(raw), time.perf_counter()
                    await _run(backend, count, size, claim)
                    wall = time.perf_counter() - started
                    server_us[name].append((await _script_usec(raw) - before) / count)
                    wall_us[name].append(wall * 1e6 / count)
            for name in backends:
                lines.append(
                    {
                        "bench": "events_cost",
                        "workload": workload,
                        "events": name,
                        "requests": count,
                        "server_us_per_request": round(statistics.median(server_us[name]), 2),
                        "wall_us_per_request": round(statistics.median(wall_us[name]), 1),
                        "server_us_per_round": [round(v, 2) for v in server_us[name]],
                        "wall_us_per_round": [round(v, 1) for v in wall_us[name]],
                    }
                )
        for backend in backends.values():
            await backend.close()
        await raw.aclose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per W2 round")
    parser.add_argument("--batch", type=int, default=250, help="requests per submission (W2)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for line in asyncio.run(measure(args.requests, args.batch, args.rounds)):
        print(json.dumps(line), flush=True)
        print(
            f"{line['workload']:8s} events={line['events']:9s}  "
            f"server {line['server_us_per_request']:6.2f} us/request   "
            f"wall {line['wall_us_per_request']:7.1f} us/request",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
