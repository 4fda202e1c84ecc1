"""What each grid operation costs Redis, in server CPU time: the basis of the sharding
projection in docs/scaling.md.

A private `redis-server`, one `RedisBackend` (events off), and each operation run alone many
times, after `CONFIG RESETSTAT`: the server's own time for it is the `usec` of `evalsha` (a
script's time includes the commands it calls) and of any other top-level command the operation
sent, from `INFO commandstats`. One JSON line per operation: `calls`, `us_per_call` and
`us_per_request` (per request key it handled), medians over `--runs`.

Operations: `script_floor` (a script that only returns: the fixed cost of any script call),
`submit_1` and `submit_100` (new top-level requests, one or a hundred per call), `submit_child`
(one re-entrant sub-request: a wait edge and the cycle check), `claim_1`, `complete_1` (cached,
one remote waiter notified), `complete_and_claim_100` (a hundred completions and a hundred
claims in one call), `take_notifications` (one notification drained), `heartbeat`.

    .venv/bin/python benchmarks/op_costs.py [--repeat 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `girder` of this checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import say
from girder.backends.base import Completion, NewRequest, NodeKind
from girder.backends.redis import RedisBackend
from girder.backends.redis_keys import RedisKeys
from girder.backends.resp import RedisClient, parse_url
from girder.config import Settings
from girder.testing.redis_server import RedisServer

_PREFIX = "ops"
_PAYLOAD = b"\x80\x05" + b"p" * 60  # about a small real request's signed payload
_OUTCOME = b"\x80\x05" + b"o" * 50


async def _server_usec(redis: RedisClient) -> float:
    """The server time of every top-level command since the last RESETSTAT (inner commands of
    scripts are in their script's time: counted once)."""
    text = (await redis.execute("INFO", "commandstats")).decode()
    total = 0.0
    for line in text.splitlines():
        name, _, fields = line.partition(":")
        if not name.startswith("cmdstat_") or name in ("cmdstat_info", "cmdstat_config"):
            continue
        stats = dict(field.split("=", 1) for field in fields.split(","))
        if "usec" in stats and not _inner(name):
            total += float(stats["usec"])
    return total


def _inner(name: str) -> bool:
    """Commands girder sends only from inside its scripts (their time is the script's)."""
    top_level = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_blpop", "cmdstat_blmove")
    return name not in top_level and not name.startswith("cmdstat_script")


class Ops:
    """The operations, each on fresh keys, with what it needs prepared outside the timing."""

    def __init__(self, backend: RedisBackend, redis: RedisClient, repeat: int) -> None:
        self.backend = backend
        self.redis = redis
        self.repeat = repeat
        self.serial = 0

    def keys(self, count: int) -> list[str]:
        self.serial += 1
        return [f"{self.serial:06}{index:06}".ljust(32, "0") for index in range(count)]

    async def timed(
        self, prepare: Callable[[], Awaitable[object]], work: Callable[[], Awaitable[object]]
    ) -> float:
        await prepare()
        await self.redis.execute("CONFIG", "RESETSTAT")
        await work()
        return await _server_usec(self.redis)

    async def script_floor(self) -> tuple[float, int, int]:
        anchor = RedisKeys(_PREFIX).leases  # a key of the grid's slot

        async def work() -> None:
            for _ in range(self.repeat):
                await self.redis.execute("EVAL", "return 1", 1, anchor)

        await self.redis.execute("EVAL", "return 1", 1, anchor)  # cached by the server
        return await self.timed(_nothing, work), self.repeat, self.repeat

    async def submit(self, per_call: int) -> tuple[float, int, int]:
        batches = [self.keys(per_call) for _ in range(self.repeat // per_call or 1)]

        async def work() -> None:
            for batch in batches:
                requests = [NewRequest(key, _PAYLOAD) for key in batch]
                await self.backend.submit("c", requests, into="w", on_top=True, job="j")

        return await self.timed(_nothing, work), len(batches), len(batches) * per_call

    async def submit_child(self) -> tuple[float, int, int]:
        parents, children = self.keys(self.repeat), self.keys(self.repeat)

        async def work() -> None:
            for parent, child in zip(parents, children, strict=True):
                request = [NewRequest(child, _PAYLOAD)]
                await self.backend.submit("w", request, into="w", on_top=True, waiter_key=parent)

        return await self.timed(_nothing, work), self.repeat, self.repeat

    async def claim_then_complete(self) -> tuple[tuple[float, int, int], tuple[float, int, int]]:
        keys = self.keys(self.repeat)

        async def queue() -> None:
            requests = [NewRequest(key, _PAYLOAD) for key in keys]
            for start in range(0, len(requests), 200):
                await self.backend.submit("c", requests[start : start + 200], into="w", on_top=True)

        async def claims() -> None:
            for _ in keys:
                await self.backend.claim("w")

        async def completes() -> None:
            for key in keys:
                await self.backend.complete("w", key, _OUTCOME, cache=True)

        claimed = await self.timed(queue, claims)
        completed = await self.timed(_nothing, completes)
        count = len(keys)
        return (claimed, count, count), (completed, count, count)

    async def complete_and_claim(self, per_call: int) -> tuple[float, int, int]:
        batches = [self.keys(per_call) for _ in range(self.repeat // per_call or 1)]

        async def queue() -> None:
            for batch in batches:
                requests = [NewRequest(key, _PAYLOAD) for key in batch]
                await self.backend.submit("c", requests, into="w", on_top=True)
            first = batches[0]
            for _ in first:
                await self.backend.claim("w")

        async def work() -> None:
            for batch in batches:
                done = [Completion(key, _OUTCOME, cache=True) for key in batch]
                await self.backend.complete_and_claim("w", done, claim=per_call)

        return await self.timed(queue, work), len(batches), len(batches) * per_call

    async def take_notifications(self) -> tuple[float, int, int]:
        """One notification per take: each completion is followed by the take that drains it
        (the completion's own time is left out)."""
        keys = self.keys(self.repeat)
        requests = [NewRequest(key, _PAYLOAD) for key in keys]
        for start in range(0, len(requests), 200):
            await self.backend.submit("c", requests[start : start + 200], into="w", on_top=True)
        total = 0.0
        for key in keys:
            await self.backend.complete("w", key, _OUTCOME, cache=True)
            total += await self.timed(_nothing, lambda: self.backend.take_notifications("c", 1.0))
        return total, len(keys), len(keys)

    async def heartbeat(self) -> tuple[float, int, int]:
        async def work() -> None:
            for _ in range(self.repeat):
                await self.backend.heartbeat("w", 60, {"ran": 1})

        return await self.timed(_nothing, work), self.repeat, self.repeat


async def _nothing() -> None:
    return None


def _line(name: str, samples: list[tuple[float, int, int]]) -> dict[str, object]:
    per_call = [usec / calls for usec, calls, _ in samples]
    per_request = [usec / requests for usec, _, requests in samples]
    line = {
        "bench": "op_costs",
        "op": name,
        "calls": samples[0][1],
        "requests": samples[0][2],
        "runs": len(samples),
        "us_per_call": round(statistics.median(per_call), 2),
        "us_per_request": round(statistics.median(per_request), 2),
        "samples_us_per_request": [round(value, 2) for value in per_request],
    }
    print(json.dumps(line), flush=True)
    say(f"{name:24} {line['us_per_call']:8} us/call {line['us_per_request']:8} us/request")
    return line


async def _measure(url: str, repeat: int, runs: int, spread_notifications: bool) -> None:
    settings = Settings(events=False, key_prefix=_PREFIX, spread_notifications=spread_notifications)
    backend = RedisBackend(url, settings=settings)
    await backend.connect()
    redis = RedisClient(parse_url(url))
    await backend.join("w", NodeKind.WORKER, None, 600)
    await backend.join("c", NodeKind.CLIENT, None, 600)
    ops = Ops(backend, redis, repeat)
    results: dict[str, list[tuple[float, int, int]]] = {}
    try:
        for _ in range(runs):
            found = {
                "script_floor": await ops.script_floor(),
                "submit_1": await ops.submit(1),
                "submit_100": await ops.submit(100),
                "submit_child": await ops.submit_child(),
            }
            found["claim_1"], found["complete_1"] = await ops.claim_then_complete()
            found["complete_and_claim_100"] = await ops.complete_and_claim(100)
            found["take_notifications"] = await ops.take_notifications()
            found["heartbeat"] = await ops.heartbeat()
            for name, sample in found.items():
                results.setdefault(name, []).append(sample)
            await backend.flush()
            await backend.join("w", NodeKind.WORKER, None, 600)
            await backend.join("c", NodeKind.CLIENT, None, 600)
        for name, samples in results.items():
            _line(name, samples)
    finally:
        await backend.flush()
        await backend.close()
        redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--spread-notifications",
        action="store_true",
        help="the nodes' notifications in their own slots (a completion's time includes its "
        "post there, on the same server)",
    )
    args = parser.parse_args()
    with RedisServer() as server:
        asyncio.run(_measure(server.url, args.repeat, args.runs, args.spread_notifications))


if __name__ == "__main__":
    main()
