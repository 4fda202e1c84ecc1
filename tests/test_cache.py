"""The result cache's lifecycle: versions that follow code, expiry, a bounded memory cache,
Redis evicting cached results and nothing else, and `girder cache stats|clear`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cachefns import block, blocks_digest, long_lived, short_lived
from gridfns import fib
from processes import CLIENT_OPTIONS, GridProcesses, wait_for_nodes, wait_until

import girder
from girder.backends.base import CacheUsage, NewRequest, RequestState
from girder.backends.memory import MemoryBackend
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.testing.redis_server import RedisServer, find_redis_server

# -- version="auto": across processes ------------------------------------------------------------

HELPERS = """
import girder

@girder.function(version="auto")
def scale(x):
    return x * 10
"""

TASKS = """
import girder
import helpers

@girder.function(version="auto")
def total(x):
    return helpers.scale(x) + offset(x)

@girder.function(version="auto")
def offset(x, base=1):
    return x + base

@girder.function(version="auto")
async def ping(n):
    if n == 0:
        return 0
    (value,) = await girder.call_reentrant([(pong, n - 1)])
    return value

@girder.function(version="auto")
async def pong(n):
    (value,) = await girder.call_reentrant([(ping, n)])
    return value + 1

@girder.function(version="auto")
def alone(x):
    return {"a", "b", "c"} | {x}

@girder.function
def by_hand(x):
    return x
"""

NAMES = ("total", "offset", "scale", "ping", "pong", "alone", "by_hand")

KEYS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import girder, helpers, tasks
requests = {
    "total": (tasks.total, 1), "offset": (tasks.offset, 1), "scale": (helpers.scale, 1),
    "ping": (tasks.ping, 1), "pong": (tasks.pong, 1), "alone": (tasks.alone, 1),
    "by_hand": (tasks.by_hand, 1),
}
print(" ".join(f"{name}={girder.Request(*request).key}" for name, request in requests.items()))
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "helpers.py").write_text(HELPERS)
    (folder / "tasks.py").write_text(TASKS)
    return folder


def keys_in_new_process(folder: Path, **env: str) -> dict[str, str]:
    """The request keys of `NAMES`, computed by a fresh interpreter (its own hash seed)."""
    environment = {k: v for k, v in os.environ.items() if k != "GIRDER_AUTO_VERSION"}
    environment["PYTHONHASHSEED"] = "random"
    done = subprocess.run(
        [sys.executable, "-c", KEYS_SCRIPT, str(folder)],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(pair.split("=") for pair in done.stdout.split())


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in NAMES if before[name] != after[name]}


def test_auto_version_keys_are_the_same_in_every_process(code: Path) -> None:
    assert keys_in_new_process(code) == keys_in_new_process(code)


def test_editing_a_function_changes_its_key_and_its_callers(code: Path) -> None:
    before = keys_in_new_process(code)
    edit(code / "tasks.py", "return x + base", "return x + base + 0")
    after = keys_in_new_process(code)
    assert changed(before, after) == {"offset", "total"}


def test_editing_a_grid_function_in_another_module_changes_its_callers(code: Path) -> None:
    before = keys_in_new_process(code)
    edit(code / "helpers.py", "x * 10", "x * 100")
    after = keys_in_new_process(code)
    assert changed(before, after) == {"scale", "total"}


def test_a_default_value_a_constant_or_a_cycle_member_counts(code: Path) -> None:
    before = keys_in_new_process(code)
    edit(code / "tasks.py", "base=1", "base=2")
    edit(code / "tasks.py", '{"a", "b", "c"}', '{"a", "b", "d"}')
    edit(code / "tasks.py", "return value + 1", "return value + 2")
    after = keys_in_new_process(code)
    assert changed(before, after) == {"offset", "total", "alone", "ping", "pong"}


def test_moving_code_in_its_file_or_commenting_it_changes_nothing(code: Path) -> None:
    before = keys_in_new_process(code)
    edit(code / "tasks.py", "import helpers\n", "import helpers\n\n# a comment\n\n\n")
    assert keys_in_new_process(code) == before


def test_the_grid_wide_setting_versions_functions_without_a_version(code: Path) -> None:
    plain = keys_in_new_process(code)
    auto = keys_in_new_process(code, GIRDER_AUTO_VERSION="true")
    assert plain["by_hand"] != auto["by_hand"]
    edit(code / "tasks.py", "    return x\n", "    return x + 0\n")
    assert keys_in_new_process(code)["by_hand"] == plain["by_hand"]
    assert keys_in_new_process(code, GIRDER_AUTO_VERSION="true")["by_hand"] != auto["by_hand"]


def test_rebinding_a_called_grid_function_in_this_process_changes_the_key() -> None:
    """A notebook cell run again rebinds a name: callers see the new code at once."""
    scope: dict[str, object] = {"girder": girder}
    exec(
        textwrap.dedent(
            """
            @girder.function(version="auto", name="cell.inner")
            def inner(x):
                return x

            @girder.function(version="auto", name="cell.outer")
            def outer(x):
                return inner(x)
            """
        ),
        scope,
    )
    outer = scope["outer"]
    first = girder.Request(outer, 1).key
    assert girder.Request(outer, 1).key == first
    exec(
        "@girder.function(version='auto', name='cell.inner')\ndef inner(x):\n    return -x\n",
        scope,
    )
    assert girder.Request(outer, 1).key != first


@pytest.mark.redis
async def test_worker_processes_and_a_client_agree_on_auto_versioned_keys(
    redis_url: str, tmp_path: Path
) -> None:
    """With `auto_version` on every node, the keys workers give sub-requests are the keys the
    client computes: every level of fib is cached under the client's auto-versioned key."""
    procs = GridProcesses(redis_url, tmp_path / "logs", GIRDER_AUTO_VERSION="1")
    try:
        procs.distributor()
        procs.worker("w1")
        await wait_for_nodes(redis_url, workers=1)
        async with girder.Grid.connect(redis_url, auto_version=True, **CLIENT_OPTIONS) as grid:
            assert await grid.call(fib, 30) == 832040
            auto_keys = [girder.Request(fib, n).key for n in range(31)]
            states = [await grid.backend.state(key) for key in auto_keys]
            assert set(states) == {RequestState.DONE}
        async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as grid:
            plain_key = girder.Request(fib, 30).key
            assert plain_key not in auto_keys
            assert await grid.backend.state(plain_key) == RequestState.UNKNOWN
    finally:
        procs.stop_all()


# -- ttl ----------------------------------------------------------------------------------------


def runs(marks: Path, prefix: str) -> int:
    return len(list(marks.glob(f"{prefix}-*")))


@asynccontextmanager
async def cache_grid(url: str | None, logs: Path) -> AsyncIterator[girder.Grid]:
    """A grid of one worker: in this process on memory (no `url`), or a distributor and a
    worker process that imports `cachefns` on Redis."""
    if url is None:
        async with girder.Grid.local(workers=1) as local:
            yield local
        return
    procs = GridProcesses(url, logs)
    try:
        procs.distributor()
        procs.worker("w1", "pool", "--import", "cachefns")
        await wait_for_nodes(url, workers=1)
        async with girder.Grid.connect(url, **CLIENT_OPTIONS) as client:
            yield client
    finally:
        procs.stop_all()


async def test_results_expire_after_their_ttl(
    backend_url: str | None, tmp_path: Path, marks: Path
) -> None:
    async with cache_grid(backend_url, tmp_path / "logs") as grid:
        assert await grid.call(short_lived, str(marks), 1) == 2
        assert await grid.call(long_lived, str(marks), 1) == 3
        assert await grid.call(short_lived, str(marks), 1) == 2
        assert runs(marks, "short-1") in {1, 2}  # 2 only if a second passed between the calls

        async def ran_again() -> bool:
            await grid.call(short_lived, str(marks), 1)
            return runs(marks, "short-1") >= 2

        await wait_until(ran_again, timeout=30, what="the 1 s result to expire")
        assert await grid.call(long_lived, str(marks), 1) == 3
        assert runs(marks, "long-1") == 1


# -- a bounded cache on memory ---------------------------------------------------------------------


async def cache(backend: MemoryBackend, key: str, size: int = 10) -> None:
    await backend.submit("c", [NewRequest(key, b"p")], into="w", on_top=True)
    assert await backend.claim("w") is not None
    await backend.complete("w", key, b"o" * size, cache=True, function="f")


async def test_the_memory_cache_drops_the_least_recently_used_entries() -> None:
    backend = MemoryBackend(settings=Settings(cache_max_entries=3))
    for key in ("a", "b", "c"):
        await cache(backend, key)
    assert await backend.result("a") is not None  # a is now the most recently used
    await cache(backend, "d")
    states = {key: await backend.state(key) for key in "abcd"}
    assert states == {
        "a": RequestState.DONE,
        "b": RequestState.UNKNOWN,
        "c": RequestState.DONE,
        "d": RequestState.DONE,
    }
    [found] = await backend.submit("c", [NewRequest("c", b"p")], into="w", on_top=True)
    assert found.outcome is not None  # a hit makes c the most recent
    await cache(backend, "e")
    assert await backend.state("a") == RequestState.UNKNOWN
    assert (await backend.cache_stats()).functions == {"f": CacheUsage(3, 3 * 10)}


async def test_the_memory_cache_stays_within_its_bytes() -> None:
    backend = MemoryBackend(settings=Settings(cache_max_bytes=1000))
    for index in range(30):
        await cache(backend, f"k{index}", size=100)
    stats = await backend.cache_stats()
    assert stats.bytes <= 1000
    assert stats.entries == 10
    assert [await backend.state(f"k{i}") for i in (19, 20, 29)] == [
        RequestState.UNKNOWN,
        RequestState.DONE,
        RequestState.DONE,
    ]
    await cache(backend, "huge", size=5000)  # bigger than the whole cache: not kept
    assert await backend.state("huge") == RequestState.UNKNOWN
    assert (await backend.cache_stats()).entries == 10


async def test_a_grid_on_a_small_memory_cache_computes_again_what_it_dropped(
    marks: Path,
) -> None:
    async with girder.Grid.local(workers=2, cache_max_entries=5) as grid:
        assert await grid.call_all([(long_lived, str(marks), n) for n in range(10)]) == [
            3 * n for n in range(10)
        ]
        assert await grid.backend.cache_size() == 5
        assert await grid.call(long_lived, str(marks), 9) == 27  # still cached
        assert runs(marks, "long-9") == 1
        assert await grid.call(long_lived, str(marks), 0) == 0  # dropped: runs again
        assert runs(marks, "long-0") == 2


# -- Redis: only cached results expire or are evicted --------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (its memory limits touch nobody else)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary on PATH")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture
async def raw(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


LAYOUTS = ["one-slot", "sharded"]
"""`Settings.layout`: the grid's records in its slot, or each in the slot of its own key."""


@pytest.fixture(params=LAYOUTS)
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The layout of the grid of a test (its processes read it from the environment)."""
    monkeypatch.setenv("GIRDER_LAYOUT", request.param)
    return str(request.param)


def record_name(layout: str, key: str) -> str:
    """The name of key's record in `layout`."""
    return f"{{girder}}:r:{key}" if layout == "one-slot" else f"{{girder:{key}}}:r"


def is_record(layout: str, name: bytes) -> bool:
    if layout == "one-slot":
        return name.startswith(b"{girder}:r:")
    return name.startswith(b"{girder:") and name.endswith(b"}:r") and b"{girder:node:" not in name


def is_expendable(layout: str, name: bytes) -> bool:
    """Whether `name` is state with an expiry that is no cached result: in the sharded
    layout, the journal entry of a record's step (`{girder:<key>}:s:<token>`, only a resend
    reads it) and a node's own inbox (`{girder:node:<node>}:...`, what it misses its waits
    make up for). None in the one-slot layout."""
    return layout == "sharded" and (b"}:s:" in name or name.startswith(b"{girder:node:"))


async def keys_with_expiry(raw: aioredis.Redis, layout: str) -> dict[str, bytes | None]:
    """Every key of the grid that has an expiry, but the expendable ones, with its status
    field if it is a record."""
    found = {}
    async for name in raw.scan_iter(match="{girder*", count=1000):
        if await raw.pttl(name) >= 0 and not is_expendable(layout, name):
            status = await raw.hget(name, "s") if is_record(layout, name) else None
            found[name.decode()] = status
    return found


@pytest.mark.redis
async def test_on_redis_only_cached_results_carry_an_expiry(
    own_redis: RedisServer, raw: aioredis.Redis, tmp_path: Path, marks: Path, layout: str
) -> None:
    procs = GridProcesses(own_redis.url, tmp_path / "logs")
    try:
        procs.distributor()
        procs.worker("w1", "pool", "--import", "cachefns")
        await wait_for_nodes(own_redis.url, workers=1)
        async with girder.Grid.connect(own_redis.url, **CLIENT_OPTIONS) as grid:
            job = grid.submit(blocks_digest, 0, 50, 1000)
            seen: dict[str, bytes | None] = {}
            while not job.done():
                seen.update(await keys_with_expiry(raw, layout))
            assert await job == sum(range(50))
            seen.update(await keys_with_expiry(raw, layout))
            assert await grid.call(long_lived, str(marks), 2) == 6
            key = girder.Request(long_lived, str(marks), 2).key
            ttl = await raw.pttl(record_name(layout, key))
    finally:
        procs.stop_all()
    assert len(seen) == 51
    assert set(seen.values()) == {b"d"}, seen
    assert 29 * 24 * 3600 * 1000 < ttl <= 30 * 24 * 3600 * 1000  # Settings.cache_ttl


@pytest.mark.redis
async def test_under_maxmemory_redis_evicts_cached_results_and_nothing_else(
    own_redis: RedisServer, raw: aioredis.Redis, tmp_path: Path, layout: str
) -> None:
    """With `volatile-lru` and a small `maxmemory`, Redis evicts cached results while parents
    wait for their children and workers complete others: every answer is still right (evicted
    ones are computed again), and every key evicted was a cached result (or, in the sharded
    layout, expendable: see `is_expendable`)."""
    await raw.config_set("maxmemory-policy", "volatile-lru")
    await raw.config_set("notify-keyspace-events", "Ee")
    evicted: list[bytes] = []
    listener = raw.pubsub()
    await listener.subscribe("__keyevent@0__:evicted")

    async def listen() -> None:
        async for message in listener.listen():
            if message["type"] == "message":
                evicted.append(message["data"])

    listening = asyncio.create_task(listen())
    procs = GridProcesses(own_redis.url, tmp_path / "logs")
    try:
        procs.distributor()
        procs.worker("w1", "pool", "--import", "cachefns")
        procs.worker("w2", "pool", "--import", "cachefns")
        await wait_for_nodes(own_redis.url, workers=2)
        async with girder.Grid.connect(own_redis.url, **CLIENT_OPTIONS) as grid:
            used = int((await raw.info("memory"))["used_memory"])
            # Room for the grid's own state (inboxes and journals hold outcomes for a while),
            # not for the 24 MB of results.
            await raw.config_set("maxmemory", str(used + 12 * 1024 * 1024))
            size, count, parents = 40_000, 10, 60
            for _ in range(2):  # the second round finds some cached, recomputes the rest
                answers = await asyncio.wait_for(
                    grid.call_all(
                        [(blocks_digest, p * count, count, size) for p in range(parents)]
                    ),
                    120,
                )
                assert answers == [sum(range(p * count, (p + 1) * count)) for p in range(parents)]
            assert await grid.call(block, 7, size) == (7).to_bytes(4, "big") * (size // 4)
            stats = await grid.backend.cache_stats()
            assert 0 < stats.entries < parents * (count + 1)
    finally:
        procs.stop_all()
        listening.cancel()
        await listener.aclose()
    assert int((await raw.info("stats"))["evicted_keys"]) > 0
    assert evicted
    assert all(is_record(layout, name) or is_expendable(layout, name) for name in evicted), set(
        evicted
    )
    assert "backend lost state" not in procs.log_text()


@pytest.mark.redis
async def test_a_wrong_maxmemory_policy_is_warned_about_once(
    own_redis: RedisServer, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def warnings_at_connect() -> list[dict[str, Any]]:
        caplog.clear()
        backend = RedisBackend(own_redis.url)
        with caplog.at_level(logging.WARNING, logger="girder"):
            await backend.connect()
        await backend.close()
        return [getattr(record, "girder_event", {}) for record in caplog.records]

    for policy, warned in (
        ("volatile-lru", False),
        ("noeviction", False),
        ("allkeys-lru", True),
        ("allkeys-lru", False),  # once
    ):
        await raw.config_set("maxmemory-policy", policy)
        events = await warnings_at_connect()
        assert any(event.get("policy") == policy for event in events) is warned, policy
    await raw.config_set("maxmemory", str(500 * 1024 * 1024))
    await raw.config_set("maxmemory-policy", "noeviction")
    events = await warnings_at_connect()
    assert [event["event"] for event in events if event.get("policy") == "noeviction"] == [
        "Redis refuses writes once maxmemory is reached instead of evicting cached results; "
        "set maxmemory-policy to volatile-lru"
    ]


# -- girder cache stats | clear --------------------------------------------------------------------


def girder_command(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "girder", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.mark.redis
async def test_cache_stats_and_clear_through_the_command(
    redis_url: str, tmp_path: Path, marks: Path
) -> None:
    async with girder.Grid.local(workers=1, backend=redis_url) as grid:
        await grid.call_all([(long_lived, str(marks), n) for n in range(4)])
        await grid.call_all([(short_lived, str(marks), n) for n in range(2)])
        await grid.call_all([(block, n, 400) for n in range(3)])
    stats = json.loads(girder_command("cache", "stats", "--json", "--backend", redis_url))
    functions = stats["functions"]
    assert functions["cachefns.long_lived"]["entries"] == 4
    assert functions["cachefns.block"]["entries"] == 3
    assert functions["cachefns.block"]["bytes"] > 3 * 400
    assert functions["cachefns.long_lived"]["bytes"] > 0
    assert stats["entries"] == sum(f["entries"] for f in functions.values())
    table = girder_command("cache", "stats", "--backend", redis_url)
    assert "cachefns.block" in table
    assert "total" in table

    said = girder_command(
        "cache", "clear", "--function", "cachefns.long_lived", "--backend", redis_url
    )
    assert said.strip() == "deleted 4 cached results of cachefns.long_lived"
    stats = json.loads(girder_command("cache", "stats", "--json", "--backend", redis_url))
    assert "cachefns.long_lived" not in stats["functions"]
    assert stats["functions"]["cachefns.block"]["entries"] == 3
    async with girder.Grid.local(workers=1, backend=redis_url) as grid:
        assert await grid.call(long_lived, str(marks), 0) == 0
        assert runs(marks, "long-0") == 2  # cleared: computed again
        assert await grid.call(block, 0, 400) == (0).to_bytes(4, "big") * 100
    said = girder_command("cache", "clear", "--backend", redis_url)
    assert said.strip().startswith("deleted ")
    stats = json.loads(girder_command("cache", "stats", "--json", "--backend", redis_url))
    assert stats == {"entries": 0, "bytes": 0, "functions": {}}


@pytest.mark.redis
async def test_a_cached_result_names_its_function_by_a_short_id(
    own_redis: RedisServer, raw: aioredis.Redis, marks: Path, layout: str
) -> None:
    """A done record holds its function's id in the grid's function table, not its module path;
    stats and clears by name still work, also with garbage in the table."""
    functions = "{girder}:functions"
    await raw.hset(functions, mapping={"i:1": "forged", "i:2": "forged too"})  # ids taken
    async with girder.Grid.local(workers=1, backend=own_redis.url) as grid:
        await grid.call_all([(long_lived, str(marks), n) for n in range(3)])
        await grid.call(short_lived, str(marks), 0)
        long_id = await raw.hget(functions, "n:cachefns.long_lived")
        short_id = await raw.hget(functions, "n:cachefns.short_lived")
        assert long_id is not None
        assert short_id is not None
        assert long_id != short_id
        assert long_id not in (b"1", b"2")
        assert short_id not in (b"1", b"2")
        assert await raw.hget(functions, b"i:" + long_id) == b"cachefns.long_lived"
        record = record_name(layout, girder.Request(long_lived, str(marks), 0).key)
        assert await raw.hget(record, "f") == long_id

        stats = await grid.backend.cache_stats()
        assert {name: usage.entries for name, usage in stats.functions.items()} == {
            "cachefns.long_lived": 3,
            "cachefns.short_lived": 1,
        }
        assert await grid.backend.cache_clear("cachefns.long_lived") == 3
        assert await grid.backend.cache_size() == 1
        assert await grid.call(long_lived, str(marks), 1) == 3
        assert runs(marks, "long-1") == 2  # cleared: computed again
