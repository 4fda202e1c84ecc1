"""The backend conformance suite on `RedisBackend`, plus what only a server can do: restart,
reconnect, reload scripts, and survive garbage that someone pushed by hand."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from girder.backends import open_backend, resp
from girder.backends.base import (
    Claimed,
    Completion,
    NewRequest,
    NodeKind,
    Notification,
    StateBackend,
)
from girder.backends.redis import RedisBackend
from girder.backends.redis_scripts import MAX_SCRIPT_KEYS
from girder.config import Settings
from girder.errors import BackendError, ConfigurationError
from girder.testing.conformance import BackendConformance, new, out, put
from girder.testing.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

PREFIX = "conformance"


class TestRedisBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, redis_url: str) -> AsyncIterator[StateBackend]:
        backend = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX))
        await backend.connect()
        yield backend
        await backend.close()


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    yield backend
    await backend.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the test server, to look at and tamper with what the backend wrote."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_the_backend_reconnects_after_a_restart(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k"], into="w")
    redis_server.restart()
    # The state is gone (and so are the loaded scripts): the node learns it must join again.
    assert (await backend.heartbeat("w", 60)).registered is False
    await backend.join("w", NodeKind.WORKER, None, 60)
    assert await backend.claim("w") is None
    await put(backend, "c", ["k"], into="w")
    assert await backend.claim("w") == Claimed("k", new("k").payload)


async def test_an_operation_waits_out_an_outage(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    """An outage is the grid's problem, not an operation's outcome: it waits and retries."""
    redis_server.kill()
    claiming = asyncio.create_task(backend.claim("w"))
    waiting = asyncio.create_task(backend.take_notifications("w", 0.1))
    done, _ = await asyncio.wait([claiming, waiting], timeout=0.5)
    assert not done, "an operation gave up while the server was down"
    redis_server.start()
    assert await asyncio.wait_for(claiming, 10) is None
    assert await asyncio.wait_for(waiting, 10) == []


async def test_the_outage_timeout_bounds_the_wait(
    redis_url: str, redis_server: RedisServer
) -> None:
    backend = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX, outage_timeout=0.3))
    await backend.connect()
    redis_server.kill()
    try:
        with pytest.raises(BackendError, match="unreachable for"):
            await asyncio.wait_for(backend.claim("w"), 10)
        with pytest.raises(BackendError, match="unreachable for"):
            await asyncio.wait_for(backend.take_notifications("w", 0.1), 10)
    finally:
        redis_server.start()
        await backend.close()


async def test_cancelling_a_node_loop_ends_it(backend: RedisBackend) -> None:
    """A cancelled task must end even when the cancel lands while a reply is arriving."""

    async def listen() -> None:
        while True:
            await backend.take_notifications("n", 0.02)
            await backend.claim("n")

    for attempt in range(40):
        task = asyncio.create_task(listen())
        await asyncio.sleep(0.001 * attempt)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done, f"attempt {attempt}: the cancelled task kept running"


async def test_connecting_to_nothing_is_a_backend_error() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BackendError, match="cannot connect"):
        await backend.connect()
    await backend.close()


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xff\xfe\x00binary", b"no-such-key", b"x" * 100_000, b"../../etc", b"{conformance}:"],
)
async def test_claim_discards_garbage_in_a_work_list(
    backend: RedisBackend, raw: aioredis.Redis, garbage: bytes
) -> None:
    await put(backend, "c", ["k"], into="w")
    await raw.rpush(f"{{{PREFIX}}}:work:w", garbage)
    assert await backend.claim("w") == Claimed("k", new("k").payload)
    assert await backend.claim("w") is None


async def test_take_notifications_drops_garbage_in_an_inbox(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await put(backend, "c", ["k"], into="w")
    await raw.rpush(f"{{{PREFIX}}}:inbox:c", b"garbage", b"99:short", b"\xff:\xfe")
    assert await backend.claim("w") is not None
    await backend.complete("w", "k", out("k"), cache=True)
    assert await backend.take_notifications("c", 5) == [Notification("k", out("k"))]


@pytest.mark.parametrize("timeout", [5.0, 0.0], ids=["blocking", "at-once"])
async def test_notifications_whose_reply_was_lost_come_again(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch, timeout: float
) -> None:
    """The wait ran on the server (the entries moved to `taken`) but its reply never arrived:
    the wait tries again and delivers them, in order, once, before anything newer."""
    await put(backend, "c", ["k1", "k2", "k3"], into="w")
    for key in ("k3", "k2"):
        assert await backend.claim("w") is not None
        await backend.complete("w", key, out(key), cache=True)
    original = resp.Connection.pipeline
    lost: list[int] = []

    async def lose_first_reply(
        self: resp.Connection, commands: Sequence[resp.Command]
    ) -> list[Any]:
        replies = await original(self, commands)
        if not lost:
            lost.append(len(commands))
            raise resp.ConnectionLost("reply lost")
        return replies

    monkeypatch.setattr(resp.Connection, "pipeline", lose_first_reply)
    notes = await backend.take_notifications("c", timeout)
    monkeypatch.undo()
    assert lost, "no reply was lost"
    assert [note.key for note in notes] == ["k3", "k2"]
    assert await backend.claim("w") is not None
    await backend.complete("w", "k1", out("k1"), cache=True)
    notes = await backend.take_notifications("c", timeout)
    assert [note.key for note in notes] == ["k1"]
    assert await backend.take_notifications("c", 0.05) == []


async def test_scripts_are_reloaded_after_a_script_flush(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await raw.script_flush()
    await put(backend, "c", ["k"], into="w")
    assert await backend.claim("w") == Claimed("k", new("k").payload)


async def test_every_key_is_under_the_prefix_hash_tag(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await backend.join("d", NodeKind.DISTRIBUTOR, None, 60)
    await backend.join("w", NodeKind.WORKER, "d", 60)
    await backend.volunteer("d", "w")
    await put(backend, "w", ["a"], into="x", waiter_key="parent")
    claimed = await backend.claim("x")
    assert claimed is not None
    await backend.complete("x", "a", out("a"), cache=True)
    await put(backend, "w", ["b", "c"])
    assert await backend.claim("w") is not None
    keys = cast(list[bytes], await raw.keys("*"))
    assert keys
    assert all(key.startswith(b"{conformance}:") for key in keys)
    assert len({key_slot(key) for key in keys}) == 1


async def test_grids_with_different_prefixes_do_not_meet(
    backend: RedisBackend, redis_url: str
) -> None:
    other = RedisBackend(redis_url, settings=Settings(key_prefix="other"))
    await other.connect()
    try:
        await put(backend, "c", ["k"], into="w")
        await backend.join("w", NodeKind.WORKER, None, 60)
        assert await other.lengths(["w"]) == [0]
        assert await other.nodes() == []
        await other.flush()
        assert await backend.lengths(["w"]) == [1]
    finally:
        await other.close()


async def test_hot_paths_are_one_round_trip_each(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips: list[list[str]] = []
    blocking = asyncio.Event()
    original = resp.Connection.pipeline

    async def counting(self: resp.Connection, commands: Sequence[resp.Command]) -> list[Any]:
        trips.append([str(command[0]) for command in commands])
        if commands[0][0] == "BLPOP":
            blocking.set()  # and the command is written before the test runs again
        return await original(self, commands)

    monkeypatch.setattr(resp.Connection, "pipeline", counting)
    await backend.submit("c", [new("k")], into="w", on_top=True)
    assert await backend.claim("w") is not None
    await backend.complete_and_claim("w", [Completion("k", out("k"), True)], claim=3)
    await backend.take_notifications("c", 5)
    await backend.wait_for_work("w", 0)  # takes the wake-up token of the first push
    waiting = asyncio.create_task(backend.wait_and_claim("w", 5))
    await blocking.wait()
    await put(backend, "c", ["k2"], into="w")
    assert await waiting == Claimed("k2", new("k2").payload)
    evalsha = ["EVALSHA"]
    assert trips == [
        evalsha,
        evalsha,
        evalsha,
        ["EVALSHA", "BLMOVE", "EVALSHA"],
        ["LPOP"],
        ["BLPOP", "EVALSHA"],
        evalsha,
    ]


async def test_the_url_hides_the_password(redis_url: str) -> None:
    with_password = redis_url.replace("redis://", "redis://user:secret@")
    backend = RedisBackend(with_password + "?password=other")
    assert "secret" not in backend.url
    assert "other" not in backend.url
    assert backend.url.startswith("redis://user:***@127.0.0.1:")
    await backend.close()


async def test_acl_user_and_password_from_the_url(raw: aioredis.Redis, redis_url: str) -> None:
    await raw.acl_setuser(
        "girder-test", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"]
    )
    try:
        url = redis_url.replace("redis://", "redis://girder-test:s3cret@")
        backend = RedisBackend(url)
        await backend.connect()
        await put(backend, "c", ["k"], into="w")
        assert await backend.lengths(["w"]) == [1]
        await backend.close()
        wrong = RedisBackend(redis_url.replace("redis://", "redis://girder-test:wrong@"))
        with pytest.raises(BackendError):
            await wrong.connect()
        await wrong.close()
    finally:
        await raw.acl_deluser("girder-test")


async def test_a_unix_socket_url(redis_server: RedisServer, redis_url: str) -> None:
    backend = open_backend(redis_server.unix_url, settings=Settings(key_prefix=PREFIX))
    assert isinstance(backend, RedisBackend)
    await backend.connect()
    await put(backend, "c", ["k"], into="w")
    assert await backend.claim("w") == Claimed("k", new("k").payload)
    await backend.close()


@pytest.mark.parametrize("scheme", ["redis", "rediss", "unix"])
def test_the_schemes_open_a_redis_backend(scheme: str) -> None:
    url = "unix:///tmp/redis.sock" if scheme == "unix" else f"{scheme}://127.0.0.1:1/0"
    assert isinstance(open_backend(url), RedisBackend)


def test_a_missing_redis_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "girder.backends.redis")
    monkeypatch.delitem(sys.modules, "girder.backends.resp")
    monkeypatch.setitem(sys.modules, "hiredis", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'girder\[redis\]'"):
        open_backend("redis://127.0.0.1:1/0")


def test_a_bad_key_prefix_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="key_prefix"):
        RedisBackend("redis://127.0.0.1:1/0", settings=Settings(key_prefix="a{b}"))


async def test_large_lists_move_in_batches(backend: RedisBackend) -> None:
    """A long list moves over several calls, `MAX_SCRIPT_KEYS` at a time, oldest first."""
    keys = [f"k{i:05}" for i in range(5000)]
    await backend.submit("c", [NewRequest(k, b"p") for k in keys], into="w", on_top=True)
    moved: list[int] = []
    while sum(moved) < 4000:
        moved.append(await backend.steal("d", "w", 4000 - sum(moved)))
    assert max(moved) == MAX_SCRIPT_KEYS
    assert sum(moved) == 4000
    assert await backend.lengths(["w", "d"]) == [1000, 4000]
    claimed = await backend.claim("d")
    assert claimed is not None
    assert claimed.key == "k00000"
