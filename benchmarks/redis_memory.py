"""Redis memory per queued request and per cached result (issue 14, item 5).

A private `redis-server` (`girder.testing.redis_server`) holds one grid; events are off
(`Settings.events`), since the event list is capped grid-wide state, not per-request state.

- `queued`: a client (`Grid.connect`) submits `--requests` top-level requests of a trivial grid
  function (`square`), each its own job, to a pool whose distributor runs but no worker: they
  stay queued. Then a worker starts in this process and runs them all.
- `cached`: the same requests once done: their cached results (the client still connected).
- `nested`: a parent waiting on children, through the backend API (payloads of the size a real
  `square` request has): `--requests` children under parents of `--fanout` children each, the
  parents running (claimed by a worker node), the children queued.

Per workload, `INFO memory`'s `used_memory` before and after gives `bytes_per_request`: all of
Redis's cost, measured (for `queued` and `cached`) once every node has sent its next heartbeats.
Its parts: `table_bytes_per_request`, the growth of the main and expiry dictionaries (`MEMORY
STATS`: an entry per key, an expiry per cached result); `client_bytes_per_request`, of the
clients' buffers; and `key_bytes_per_request`, the `MEMORY USAGE` of every key of the grid, in
all and per kind of key in `kinds` (`r:`, `work:`, `journal:`, ...: keys per request, the
median bytes of one, their bytes per request). `payload_bytes` is the size of one stored
payload. Runs `--runs` times, each on a fresh server; medians (`kinds` of the last run).
`--layout sharded` measures the sharded layout (`Settings.layout`), whose records are named
`{<prefix>:<key>}:r` (kind `{key}:r` in `kinds`); it adds `cached_settled`, measured again
once the completions' step journal entries (`{key}:s:`, 30 s) have expired.

    .venv/bin/python benchmarks/redis_memory.py [--requests 20000] [--fanout 10] [--runs 3]
        [--layout one-slot|sharded]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `girder` of this checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import girder
from benchmarks.harness import grid_secret, say
from benchmarks.workloads import square
from girder.backends.base import NewRequest, NodeKind
from girder.backends.redis import open_redis
from girder.backends.redis_keys import CLOCK, RECORD, RedisKeys
from girder.backends.resp import RedisClient, parse_url
from girder.config import load_settings
from girder.scheduler import Distributor, Worker
from girder.testing.redis_server import RedisServer

_PREFIX, _NESTED = "girder", "nested"


def _key(text: str) -> str:
    """A request key of the length girder makes them (`girder.keys`): 32 hex digits."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


async def _memory(redis: RedisClient) -> dict[str, int]:
    """`used_memory`, and from `MEMORY STATS` the main and expiry dictionaries of database 0
    (`tables`) and the buffers of the normal clients (`clients`)."""
    info = (await redis.execute("INFO", "memory")).decode()
    used = int(next(line for line in info.splitlines() if line.startswith("used_memory:"))[12:])
    stats = await redis.execute("MEMORY", "STATS")
    fields = dict(zip(stats[::2], stats[1::2], strict=True))
    db = fields.get(b"db.0") or []
    tables = dict(zip(db[::2], db[1::2], strict=True))
    return {
        "used": used,
        "tables": sum(tables.values()),
        "clients": fields[b"clients.normal"],
    }


def _kind(name: bytes, prefix: str) -> str | None:
    """The kind of a key of the grid `prefix`: its name up to the first ':' after the prefix,
    or for a key in its own slot (`{<prefix>:<key>}:r`) `{key}:` and what follows up to the
    next ':'; None for another grid's key."""
    base = RedisKeys(prefix).base.encode()
    if name.startswith(base):
        kind, colon, _ = name[len(base) :].partition(b":")
        return (kind + colon).decode()
    own = b"{" + prefix.encode() + b":"
    if name.startswith(own) and b"}:" in name:
        kind, colon, _ = name.partition(b"}:")[2].partition(b":")
        return "{key}:" + (kind + colon).decode()
    return None


async def _kinds(redis: RedisClient, prefix: str, requests: int) -> dict[str, dict[str, float]]:
    """Per kind of key of the grid `prefix` (`_kind`): keys per request, the median `MEMORY
    USAGE` of one and their sum per request."""
    names: dict[str, list[bytes]] = {}
    cursor = b"0"
    while True:
        match = b"{" + prefix.encode() + b"*"
        cursor, found = await redis.execute("SCAN", cursor, "MATCH", match, "COUNT", 1000)
        for name in found:
            kind = _kind(name, prefix)
            if kind is not None:
                names.setdefault(kind, []).append(name)
        if cursor == b"0":
            break
    kinds = {}
    for kind, named in sorted(names.items()):
        every = sorted(set(named))  # SCAN may name a key twice
        sizes: list[int] = []
        for start in range(0, len(every), 1000):
            batch = every[start : start + 1000]
            found = await redis.pipeline([("MEMORY", "USAGE", n, "SAMPLES", "0") for n in batch])
            sizes += [size for size in found if size is not None]  # None: expired since
        if not sizes:
            continue
        kinds[kind] = {
            "keys_per_request": round(len(sizes) / requests, 3),
            "bytes": statistics.median(sizes),
            "bytes_per_request": round(sum(sizes) / requests, 1),
        }
    return kinds


async def _measure(
    redis: RedisClient, prefix: str, requests: int, before: dict[str, int], *, beats: bool = True
) -> dict[str, object]:
    """Bytes per request added since `before` (a `_memory`), in all and per kind of key. With
    `beats`, once every node of the grid has sent its next heartbeats (they trim what bursts of
    calls left in the nodes' journals)."""
    if beats:
        await _heartbeats(redis, prefix)
    after = await _memory(redis)
    kinds = await _kinds(redis, prefix, requests)
    added = {name: round((after[name] - before[name]) / requests, 1) for name in after}
    return {
        "bytes_per_request": added["used"],
        "table_bytes_per_request": added["tables"],
        "client_bytes_per_request": added["clients"],
        "key_bytes_per_request": round(sum(k["bytes_per_request"] for k in kinds.values()), 1),
        "kinds": kinds,
    }


async def _heartbeats(redis: RedisClient, prefix: str) -> None:
    """Wait until the grid's clock, which every heartbeat raises, has risen by twice the number
    of nodes (with a heartbeat a second, every node has sent at least one)."""
    keys = RedisKeys(prefix)
    nodes = int(await redis.execute("ZCARD", keys.leases))

    async def clock() -> int:
        return int(await redis.execute("GET", keys.base + CLOCK) or 0)

    start = await clock()

    async def risen() -> bool:
        return await clock() >= start + 2 * nodes

    await _until(risen, "the nodes' heartbeats")


async def _steps_expired(redis: RedisClient, prefix: str) -> None:
    """Wait until no journal entry of a record's step is left (the sharded layout keeps a
    completion's for `STEP_JOURNAL_MS`, 30 s)."""
    pattern = RedisKeys(prefix).own_step_pattern()

    async def expired() -> bool:
        cursor = b"0"
        while True:
            cursor, found = await redis.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 10000)
            if found:
                return False
            if cursor == b"0":
                return True

    await _until(expired, "the steps' journal entries to expire")


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(6000):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"waited 300 s for {what}")


async def _top_level(
    url: str, requests: int, layout: str
) -> tuple[dict[str, dict[str, object]], bytes]:
    """`queued` and `cached`: top-level requests of `square`, first with no worker, then run.
    Also returns the payload of one queued request, as the client stored it."""
    settings = load_settings(
        backend=url, events=False, pool_wait=3600.0, key_prefix=_PREFIX, layout=layout
    )
    redis = RedisClient(parse_url(url))
    served = open_redis(url, settings=settings)
    await served.connect()
    distributor = Distributor(served, settings)
    await distributor.start()
    worker = Worker(served, settings, node_id="bench-w1")
    figures = {}
    async with girder.Grid.connect(
        url, events=False, pool_wait=3600.0, key_prefix=_PREFIX, layout=layout
    ) as grid:
        empty = await _memory(redis)
        handles = [grid.submit(square, index) for index in range(requests)]
        keys = RedisKeys(_PREFIX)
        pattern = keys.own_record_pattern() if layout == "sharded" else keys.pattern(RECORD)

        async def all_queued() -> bool:
            count, cursor = 0, b"0"
            while True:
                cursor, found = await redis.execute(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", 10000
                )
                count += len(found)
                if cursor == b"0":
                    return count >= requests

        await _until(all_queued, "the submissions")
        figures["queued"] = await _measure(redis, _PREFIX, requests, empty)
        say(f"  queued: {figures['queued']['bytes_per_request']} bytes per request")
        [payload] = await served.payloads([girder.Request(square, 0).key])
        assert payload is not None
        figures["queued"]["payload_bytes"] = len(payload)

        await worker.start()
        values = await asyncio.gather(*handles)
        assert values == [index * index for index in range(requests)]
        figures["cached"] = await _measure(redis, _PREFIX, requests, empty)
        say(f"  cached: {figures['cached']['bytes_per_request']} bytes per result")
        if layout == "sharded":  # once the completions' journal entries have expired
            await _steps_expired(redis, _PREFIX)
            figures["cached_settled"] = await _measure(redis, _PREFIX, requests, empty)
            settled = figures["cached_settled"]["bytes_per_request"]
            say(f"  cached, settled: {settled} bytes per result")
    await worker.stop()
    await distributor.stop()
    await served.close()
    redis.close()
    return figures, payload


async def _nested(
    url: str, requests: int, fanout: int, payload: bytes, layout: str
) -> dict[str, object]:
    """Children queued under running parents that wait for them (backend API), each with
    `payload` (a real one's bytes)."""
    settings = load_settings(backend=url, events=False, key_prefix=_NESTED, layout=layout)
    backend = open_redis(url, settings=settings)
    await backend.connect()
    redis = RedisClient(parse_url(url))
    parents = [_key(f"parent {index}") for index in range(requests // fanout)]
    await backend.join("client", NodeKind.CLIENT, None, 3600)
    await backend.join("worker", NodeKind.WORKER, None, 3600)
    await backend.submit(
        "client",
        [NewRequest(key, payload, "fan") for key in parents],
        into="worker",
        on_top=False,
        job="job",
    )
    for _ in parents:
        assert await backend.claim("worker") is not None

    before = await _memory(redis)
    for parent in parents:
        keys = [_key(f"{parent} {index}") for index in range(fanout)]
        await backend.submit(
            "worker",
            [NewRequest(key, payload, "square") for key in keys],
            into="worker",
            on_top=True,
            waiter_key=parent,
        )

    figures = await _measure(redis, _NESTED, requests, before, beats=False)  # no node beats
    await backend.close()
    redis.close()
    return figures


async def one_run(requests: int, fanout: int, layout: str) -> dict[str, dict[str, object]]:
    grid_secret()
    with RedisServer() as server:
        figures, payload = await _top_level(server.url, requests, layout)
        figures["nested"] = await _nested(server.url, requests, fanout, payload, layout)
        say(f"  nested: {figures['nested']['bytes_per_request']} bytes per child")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--fanout", type=int, default=10, help="children per parent (nested)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layout", choices=("one-slot", "sharded"), default="one-slot")
    args = parser.parse_args()
    runs = []
    for index in range(args.runs):
        say(f"run {index + 1} of {args.runs}")
        runs.append(asyncio.run(one_run(args.requests, args.fanout, args.layout)))
    for workload in [name for name in runs[0] if name != "nested"] + ["nested"]:
        figures = [run[workload] for run in runs]
        line: dict[str, object] = {
            "bench": "redis_memory",
            "workload": workload,
            "layout": args.layout,
            "requests": args.requests,
            "runs": args.runs,
        }
        for name, value in figures[0].items():
            if isinstance(value, int | float):  # medians over the runs
                line[name] = statistics.median(float(f[name]) for f in figures)  # type: ignore[arg-type]
        line["samples"] = [f["bytes_per_request"] for f in figures]
        line["kinds"] = figures[-1]["kinds"]
        if workload == "nested":
            line["fanout"] = args.fanout
        print(json.dumps(line), flush=True)
        say(f"{workload:7s} {line['bytes_per_request']:7.1f} bytes per request  {line['samples']}")


if __name__ == "__main__":
    main()
