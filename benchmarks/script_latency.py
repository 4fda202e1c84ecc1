"""How long one girder script holds Redis, for the operations that touch the most keys.

Redis runs one script at a time, so a long script stalls every node of the grid. girder cuts its
work so that no script call handles more than `MAX_SCRIPT_KEYS` request keys or
`MAX_SCRIPT_BYTES` of payloads. This measures the result with the server's own clock: a private
`redis-server` logs every command in its SLOWLOG, and each workload reports its slowest script.

    .venv/bin/python benchmarks/script_latency.py [--requests 200000]

One JSON line per workload: `workload`, `requests`, `scripts` (script calls logged: those over
0.2 ms), `max_script_ms` and `p99_script_ms` (of those).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `girder` of this checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from girder.backends.base import NewRequest, NodeKind
from girder.backends.redis import RedisBackend
from girder.testing.redis_server import RedisServer

_PAYLOAD = b"\x01" + bytes(100)
"""About the size of a small signed request payload."""


async def _slowest(raw: aioredis.Redis, work: Callable[[], Awaitable[object]]) -> dict[str, float]:
    """Run `work` with every command logged; the count and the slowest of its EVALSHAs."""
    await raw.slowlog_reset()
    await work()
    entries = await raw.slowlog_get(1_000_000)
    durations = sorted(
        entry["duration"] / 1000 for entry in entries if entry["command"].startswith(b"EVALSHA")
    )
    if not durations:
        return {"scripts": 0, "max_script_ms": 0.0, "p99_script_ms": 0.0}
    return {
        "scripts": len(durations),
        "max_script_ms": round(durations[-1], 3),
        "p99_script_ms": round(durations[int(0.99 * (len(durations) - 1))], 3),
    }


async def measure(count: int) -> list[dict[str, object]]:
    with RedisServer() as server:
        raw = aioredis.Redis.from_url(server.url)
        # Above the cost of one command inside a script (which the SLOWLOG would log too, and
        # slow every script down logging them), below anything that matters.
        await raw.config_set("slowlog-log-slower-than", "200")
        await raw.config_set("slowlog-max-len", "1000000")
        backend = RedisBackend(server.url)
        await backend.connect()
        requests = [NewRequest(f"k{i:07}", _PAYLOAD) for i in range(count)]
        await backend.join("d", NodeKind.DISTRIBUTOR, None, 600)
        await backend.join("w", NodeKind.WORKER, "d", 600)
        results = []

        async def submit() -> None:
            await backend.submit("c", requests, into="w", on_top=True)

        async def trim() -> None:
            await backend.trim("d", ["w"])

        async def hand_out() -> None:
            await backend.volunteer("d", "w")
            await backend.hand_out("d", even_share=True)

        async def leave() -> None:
            await backend.leave("w")

        async def trims_after_leave() -> None:
            while await backend.trim("d", []):
                pass

        for name, work in (
            ("submit", submit),
            ("trim", trim),
            ("hand_out_even_share", hand_out),
            ("leave_with_a_long_list", leave),
            ("trim_a_departed_members_list", trims_after_leave),
        ):
            found = await _slowest(raw, work)
            results.append({"workload": name, "requests": count, **found})
        await backend.close()
        await raw.aclose()
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000, help="keys (200000)")
    args = parser.parse_args()
    for line in asyncio.run(measure(args.requests)):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
