"""The backend conformance suite on `RedisBackend`, plus what only a server can do: restart,
reconnect, reload scripts, and survive garbage that someone pushed by hand."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from backends import MovedResultsPublishNoHitEvents, lose_every_reply_once
from redis.crc import key_slot

from girder.backends import open_backend, redis_blobs, resp
from girder.backends.base import (
    Claimed,
    Completion,
    NewRequest,
    NodeKind,
    Notification,
    RequestState,
    StateBackend,
    Submitted,
)
from girder.backends.redis import RedisBackend
from girder.backends.redis_keys import F_OUTCOME, F_PAYLOAD, chunked
from girder.backends.redis_scripts import (
    MAX_SCRIPT_KEYS,
    MAX_SUBMIT_KEYS,
    REQUEST_ARGS,
    SPECS,
    events_slack,
)
from girder.config import Settings
from girder.errors import BackendError, ConfigurationError
from girder.testing.conformance import (
    BackendConformance,
    blob,
    claim_all,
    new,
    out,
    put,
    watch,
)
from girder.testing.proxy import FaultProxy
from girder.testing.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

PREFIX = "conformance"
COMPACT = (b"listpack", b"ziplist")
"""The encodings of a small hash (a ziplist before Redis 7)."""


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


async def test_a_long_outage_is_tried_again_a_few_times_per_lease(fault_proxy: FaultProxy) -> None:
    """The delay between attempts grows, but never past a quarter of the lease: a node that
    came back later than a lease after the server did would be declared dead by those that
    came back first. (2 s, the longest delay, is more than this lease of 0.8 s.)"""
    settings = Settings(key_prefix=PREFIX, heartbeat_ttl=0.8)
    backend = RedisBackend(fault_proxy.url, settings=settings)
    await backend.connect()
    try:
        fault_proxy.refuse(True)
        claiming = asyncio.create_task(backend.claim("w"))
        await asyncio.sleep(2.0)
        before = fault_proxy.connections_cut
        await asyncio.sleep(2.0)  # the delay is at its longest by now
        assert fault_proxy.connections_cut - before >= 2.0 / 0.2 - 3
        fault_proxy.refuse(False)
        assert await asyncio.wait_for(claiming, 10) is None
    finally:
        await backend.close()


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


async def test_connecting_while_redis_loads_its_data_waits_until_it_is_ready() -> None:
    """A node that starts while Redis reloads its data after a restart (replies LOADING) waits
    for it instead of exiting: a server that answers is not a wrong URL."""
    slow_load = ("--key-load-delay", "200", "--loading-process-events-interval-bytes", "1024")
    with RedisServer(options=("--appendonly", "no", *slow_load)) as server:
        raw = aioredis.Redis(port=server.port)
        try:
            async with raw.pipeline(transaction=False) as pipe:
                for index in range(5000):
                    pipe.set(f"filler:{index}", "x")
                await pipe.execute()
            await raw.save()
        finally:
            await raw.aclose()
        server.kill()
        starting = asyncio.create_task(asyncio.to_thread(server.start))  # returns once loaded
        loading = False
        for _ in range(500):
            try:
                server.command("PING")
            except (OSError, RuntimeError) as exc:
                loading = "LOADING" in str(exc)
            if loading:
                break
            await asyncio.sleep(0.01)
        assert loading, "the restarted server never said LOADING"
        backend = RedisBackend(server.url, settings=Settings(key_prefix=PREFIX))
        try:
            await asyncio.wait_for(backend.connect(), 60)
            assert int(str(server.command("DBSIZE"))) == 5000  # connected once the data was back
        finally:
            await backend.close()
            await starting


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


async def test_a_reload_of_the_scripts_whose_reply_is_lost_is_made_again(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica promoted in a failover lacks the scripts, and its connection may drop while
    they load: the operation waits the loss out like any other (a lost reply of SCRIPT LOAD
    once escaped as a raw `ReplyLost` and killed a worker's evaluation)."""
    await raw.script_flush()
    lost = lose_every_reply_once(monkeypatch)
    await put(backend, "c", ["k"], into="w")
    assert await backend.claim("w") == Claimed("k", new("k").payload)
    assert any("'SCRIPT', 'LOAD'" in command for command in lost)


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
    with pytest.raises(ConfigurationError, match=r"pip install 'girder-grid\[redis\]'"):
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


# -- scripts that are safe to resend ---------------------------------------------------------------


def _lose_replies(
    monkeypatch: pytest.MonkeyPatch, first_word: str, count: int = 1
) -> list[Sequence[resp.Command]]:
    """Make the next `count` pipelines whose first command's script (or command) contains
    `first_word` run on the server and then lose their reply. Returns what was lost."""
    original = resp.Connection.pipeline
    lost: list[Sequence[resp.Command]] = []

    async def losing(self: resp.Connection, commands: Sequence[resp.Command]) -> list[Any]:
        replies = await original(self, commands)
        if len(lost) < count and first_word in repr(commands[0])[:20000]:
            lost.append(commands)
            raise resp.ConnectionLost("reply lost on its way")
        return replies

    monkeypatch.setattr(resp.Connection, "pipeline", losing)
    return lost


async def test_a_claim_whose_reply_was_lost_claims_nothing_more(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script ran, its reply was lost, the call is sent again: it returns what the first
    run claimed instead of claiming the next key (which would stay running under a live
    worker that never heard of it)."""
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k2", "k1"], into="w")
    lost = _lose_replies(monkeypatch, "EVALSHA")
    assert await backend.claim("w") == Claimed("k1", new("k1").payload)
    monkeypatch.undo()
    assert len(lost) == 1
    [info] = await backend.nodes()
    assert info.running == 1
    assert await backend.claim("w") == Claimed("k2", new("k2").payload)


async def test_a_complete_and_claim_whose_reply_was_lost_is_applied_once(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k3", "k2", "k1"], into="w")
    assert await backend.claim("w") is not None
    lost = _lose_replies(monkeypatch, "EVALSHA")
    claimed = await backend.complete_and_claim("w", [Completion("k1", out("k1"), True)], claim=1)
    monkeypatch.undo()
    assert len(lost) == 1
    assert claimed == [Claimed("k2", new("k2").payload)]
    assert await backend.cache_size() == 1
    assert await backend.take_notifications("c", 5) == [Notification("k1", out("k1"))]
    assert await backend.claim("w") == Claimed("k3", new("k3").payload)


async def test_journal_entries_are_dropped_once_their_reply_arrived(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", [f"k{i}" for i in range(50)], into="w")
    for _ in range(50):
        assert await backend.claim("w") is not None
    assert await raw.hlen(f"{{{PREFIX}}}:journal:w") <= 16
    await backend.leave("w")
    assert not await raw.exists(f"{{{PREFIX}}}:journal:w")


async def test_a_long_submit_is_cut_into_short_scripts(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    original = resp.Connection.pipeline

    async def counting(self: resp.Connection, commands: Sequence[resp.Command]) -> list[Any]:
        for command in commands:
            if command[0] == "EVALSHA":
                sizes.append(len(command))
        return await original(self, commands)

    monkeypatch.setattr(resp.Connection, "pipeline", counting)
    keys = [f"k{i:05}" for i in range(2500)]
    found = await backend.submit("c", [NewRequest(k, b"p") for k in keys], into="w", on_top=False)
    monkeypatch.undo()
    assert found == [Submitted(key) for key in keys]
    assert len(sizes) == -(-2500 // MAX_SUBMIT_KEYS)
    head = 5 + len(SPECS["submit"].all_args)  # EVALSHA sha 2 leases migrating, then the arguments
    assert max(sizes) <= head + len(REQUEST_ARGS) * MAX_SUBMIT_KEYS
    assert await claim_all(backend, "w") == keys


# -- garbage and forged records --------------------------------------------------------------------


async def test_a_record_owned_by_a_node_that_does_not_exist_runs_again(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    record = f"{{{PREFIX}}}:r:k"
    await raw.hset(record, mapping={"s": "r", "o": "ghost", "pl": new("k").payload})
    assert await put(backend, "c", ["k"], into="w") == [Submitted("k")]
    assert await backend.claim("w") == Claimed("k", new("k").payload)
    await backend.complete("w", "k", out("k"), cache=True)
    assert await backend.take_notifications("c", 5) == [Notification("k", out("k"))]


async def test_a_record_made_pending_again_keeps_no_chunk_of_its_old_values(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A record running under a node the grid does not know, with a payload and an outcome of
    several chunks, takes the payload of the next submission whole and nothing else."""
    record = f"{{{PREFIX}}}:r:k"
    stale = {
        "s": "r",
        "o": "ghost",
        **chunked(F_PAYLOAD, bytes(300)),
        **chunked(F_OUTCOME, b"x" * 300),
    }
    await raw.hset(record, mapping=stale)  # type: ignore[arg-type]
    assert await put(backend, "c", ["k"], into="w") == [Submitted("k")]
    assert await backend.claim("w") == Claimed("k", new("k").payload)
    assert {name.decode() for name in await raw.hkeys(record)} == {"s", "o", "pl", "w:c"}


async def test_a_queued_request_is_one_compact_key(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """Its waiters and roots are fields of its record, and a payload of up to 512 bytes is
    stored in chunks short enough for Redis to keep the record a listpack; once done, the
    record holds none of them."""
    await backend.join("c", NodeKind.CLIENT, None, 60)
    payload = bytes(range(256)) * 2
    await backend.submit("c", [NewRequest("k", payload)], into="w", on_top=False, job="j")
    await backend.submit("c2", [NewRequest("k", payload)], into="w", on_top=False)
    record = f"{{{PREFIX}}}:r:k"
    assert [name async for name in raw.scan_iter(match=f"{{{PREFIX}}}:*:k")] == [record.encode()]
    assert await raw.object("encoding", record) in COMPACT
    assert {b"w:c", b"w:c2", b"r:j"} <= set(await raw.hkeys(record))
    assert await backend.claim("w") == Claimed("k", payload)
    await backend.complete("w", "k", out("k"), cache=True)
    assert await raw.object("encoding", record) in COMPACT
    assert {name.decode() for name in await raw.hkeys(record)} == {"s", "f", "v"}


async def test_wait_edges_are_fields_of_the_two_records(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A child waited on by a request key (64 hex digits) names it as a bare field, so the child
    stays one listpack; the parent names the child. Completing the child drops both."""
    parent, child = "ab" * 32, "cd" * 32
    await put(backend, "c", [parent], into="w")
    assert await backend.claim("w") == Claimed(parent, new(parent).payload)
    await backend.submit("w", [new(child)], into="w", on_top=True, waiter_key=parent)
    records = {key: f"{{{PREFIX}}}:r:{key}" for key in (parent, child)}
    assert [name async for name in raw.scan_iter(match=f"{{{PREFIX}}}:*{child}")] == [
        records[child].encode()
    ]
    assert await raw.object("encoding", records[child]) in COMPACT
    assert {b"w:w", parent.encode()} <= set(await raw.hkeys(records[child]))
    assert f"a:{child}".encode() in await raw.hkeys(records[parent])
    assert await backend.claim("w") == Claimed(child, new(child).payload)
    await backend.complete("w", child, out(child), cache=True)
    outcome = {"v", "v2"}  # 74 bytes; the payload went with the run
    assert {name.decode() for name in await raw.hkeys(records[child])} == {"s", "f"} | outcome
    assert {name.decode() for name in await raw.hkeys(records[parent])} == {
        "s",
        "o",
        "w:c",
        "pl",
        "pl2",
    }


async def test_a_heartbeat_trims_the_journal_a_burst_of_calls_left(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """Calls sent all at once carry the same oldest awaited token, so none of them can trim the
    journal; the node's next heartbeat does, once their replies are in."""
    await backend.join("c", NodeKind.CLIENT, None, 60)
    await asyncio.gather(*(put(backend, "c", [f"k{i}"], into="w") for i in range(100)))
    journal = f"{{{PREFIX}}}:journal:c"
    assert await raw.hlen(journal) == 100
    await backend.heartbeat("c", 60)
    assert await raw.hlen(journal) == 0


async def test_a_request_waiting_for_thousands_completes_and_is_cancelled_whole(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """More wait edges in one record than Lua's unpack() takes at once: dropping them when the
    waiting request completes, or when what it waits for is cancelled, still happens whole."""
    children = {parent: [f"{parent}-{i}" for i in range(9000)] for parent in ("done", "late")}
    await put(backend, "c", list(children), into="w")
    for parent, keys in children.items():
        assert await backend.claim("w") is not None
        await backend.submit("w", [new(k) for k in keys], into="x", on_top=True, waiter_key=parent)
    record = f"{{{PREFIX}}}:r:"
    assert await raw.hlen(record + "done") > 9000

    await backend.complete("w", "done", out("done"), cache=True)
    assert await backend.result("done") == out("done")
    assert not [f for f in await raw.hkeys(record + "done") if f.startswith(b"a:")]
    assert b"b:done" not in await raw.hkeys(record + "done-1")

    step = await backend.cancel("w", "timeout", below="late")
    cancelled = set(step.cancelled)
    while step.remaining:
        step = await backend.cancel("w", "timeout")
        cancelled |= set(step.cancelled)
    assert cancelled == set(children["late"])
    assert not [f for f in await raw.hkeys(record + "late") if f.startswith(b"a:")]
    assert await backend.state("late-1") == RequestState.UNKNOWN


async def test_a_record_with_an_unknown_status_is_run(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await put(backend, "c", ["k"], into="w")
    await raw.hset(f"{{{PREFIX}}}:r:k", "s", "what")
    assert await backend.claim("w") == Claimed("k", new("k").payload)


async def test_a_record_that_is_no_hash_is_handed_out_to_be_failed(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """Garbage in place of a record: the worker gets an empty payload (it fails the request
    as malformed) instead of the key staying queued forever. The waiters, which the record
    held, went with it (a waiting node submits the key again when it checks on it)."""
    await put(backend, "c", ["k"], into="w")
    await raw.delete(f"{{{PREFIX}}}:r:k")
    await raw.set(f"{{{PREFIX}}}:r:k", "garbage")
    await raw.rpush(f"{{{PREFIX}}}:work:w", "k")
    claimed = await backend.claim("w")
    assert claimed == Claimed("k", b"")
    await backend.complete("w", "k", out("k", "error"), cache=False)
    assert f"{{{PREFIX}}}:r:k".encode() in await raw.lrange(f"{{{PREFIX}}}:corrupt", 0, -1)


@pytest.mark.parametrize("garbage", ["r:parent", "running:w", "functions"])
async def test_garbage_of_the_wrong_type_never_half_does_a_completion(
    backend: RedisBackend, raw: aioredis.Redis, garbage: str
) -> None:
    """A completion either happens whole or not at all: garbage of the wrong type in any key
    it touches is repaired (deleted and noted), never a Lua error after the record changed."""
    await backend.join("c2", NodeKind.CLIENT, None, 60)
    await put(backend, "c", ["k"], into="w", waiter_key="parent")
    await put(backend, "c2", ["k"], into="w")
    assert await backend.claim("w") is not None
    name = f"{{{PREFIX}}}:{garbage}"
    await raw.delete(name)
    await raw.set(name, "garbage")
    await backend.complete("w", "k", out("k"), cache=True)
    assert await backend.result("k") == out("k")
    assert await backend.take_notifications("c2", 5) == [Notification("k", out("k"))]
    assert name.encode() in await raw.lrange(f"{{{PREFIX}}}:corrupt", 0, -1)


@pytest.mark.parametrize("garbage", ["inbox:c", "taken:c", "wake:w", "volunteers:d", "work:w"])
async def test_garbage_of_the_wrong_type_in_a_node_key_is_repaired(
    backend: RedisBackend, raw: aioredis.Redis, garbage: str
) -> None:
    name = f"{{{PREFIX}}}:{garbage}"
    await raw.hset(name, "x", "garbage")
    await backend.join("w", NodeKind.WORKER, "d", 60)
    await backend.volunteer("d", "w")
    await backend.wait_for_work("w", 0)
    assert await backend.take_notifications("c", 0) == []
    await put(backend, "c", ["k"], into="w")
    assert await backend.claim("w") == Claimed("k", new("k").payload)
    await backend.complete("w", "k", out("k"), cache=True)
    assert await backend.take_notifications("c", 5) == [Notification("k", out("k"))]


async def test_status_survives_nodes_without_a_membership_record(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """An evicted or mangled membership hash is skipped, not a crash of `girder status`."""
    await backend.join("w", NodeKind.WORKER, None, 60)
    await backend.join("x", NodeKind.WORKER, None, 60)
    await raw.delete(f"{{{PREFIX}}}:node:x")
    await raw.zadd(f"{{{PREFIX}}}:leases", {"forged": 2**50})
    assert [info.node for info in await backend.nodes()] == ["w"]


async def test_a_departed_node_leaves_no_inbox_behind(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await backend.join("c", NodeKind.CLIENT, None, 60)
    await put(backend, "c", [f"k{i}" for i in range(20)], into="w")
    await backend.leave("c")
    while (claimed := await backend.claim("w")) is not None:
        await backend.complete("w", claimed.key, out(claimed.key), cache=True)
    assert not await raw.exists(f"{{{PREFIX}}}:inbox:c")


class TestRedisBackendLosingEveryReplyOnce(BackendConformance):
    """The whole suite again, with the reply of every distinct command lost once after the
    server ran it: every script runs twice (the client sends it again), and every rule must
    still hold. Waits for a wake-up are spared (a lost wake-up only costs a wake-up)."""

    spread_results = False
    spread_notifications = False

    @pytest.fixture
    async def backend(
        self, redis_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[StateBackend]:
        seen = lose_every_reply_once(monkeypatch)
        settings = Settings(
            key_prefix=PREFIX,
            spread_results=self.spread_results,
            spread_notifications=self.spread_notifications,
        )
        backend = RedisBackend(redis_url, settings=settings)
        await backend.connect()
        yield backend
        await backend.close()
        assert seen, "no reply was lost"


class TestRedisBackendSpreadingResultsLosingEveryReplyOnce(
    MovedResultsPublishNoHitEvents, TestRedisBackendLosingEveryReplyOnce
):
    """The same, with cached results moved to their own keys' slots: every step of a move
    runs twice too. (The suite with the setting and no lost replies runs on the cluster.)"""

    spread_results = True


class TestRedisBackendSpreadingNotificationsLosingEveryReplyOnce(
    TestRedisBackendLosingEveryReplyOnce
):
    """The same, with each node's notifications in a slot of its own (`spread_notifications`):
    every post is sent twice, every completion that reports posts is replayed from its
    journal. (The suite with the setting and no lost replies runs on the cluster.)"""

    spread_notifications = True


async def test_a_server_stall_longer_than_the_leases_reaps_nobody(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Redis stops for longer than every lease (a slow fork, a VM pause), and a reap sent during
    the stall runs first when it resumes, before the heartbeats queued behind it: the server's
    clock jumped, but the nodes were not silent, the server was. Nobody is declared dead; a node
    that stays silent while others beat still is. (Leases of 0.5 s, beats every 0.1 s.)"""
    settings = Settings(key_prefix=PREFIX, heartbeat_interval=0.1)
    backend = RedisBackend(redis_url, settings=settings)
    await backend.connect()
    await backend.join("a", NodeKind.WORKER, None, 0.5)
    await backend.join("b", NodeKind.WORKER, None, 0.5)
    await backend.join("r", NodeKind.CLIENT, None, 60)  # a reaper outlives the stall
    redis_server.pause()
    try:
        reaping = asyncio.create_task(backend.reap("r", 3))
        await asyncio.sleep(1.5)  # the stall itself: three leases long
    finally:
        redis_server.resume()
    assert (await asyncio.wait_for(reaping, 10)).dead == ()
    assert {info.node for info in await backend.nodes() if info.alive} == {"a", "b", "r"}

    async def only_b_reaped() -> bool:
        await backend.heartbeat("a", 0.5)
        return (await backend.reap("r", 3)).dead == ("b",)

    deadline = asyncio.get_running_loop().time() + 10
    while not await only_b_reaped():
        assert asyncio.get_running_loop().time() < deadline, "a silent node was never reaped"
        await asyncio.sleep(0.1)
    await backend.close()


# -- blobs in parts --------------------------------------------------------------------------------


async def test_a_large_blob_travels_in_parts_and_leaves_none_behind(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_blobs, "BLOB_CHUNK_BYTES", 1000)
    sent: list[int] = []
    original = resp.Connection.pipeline

    async def counting(self: resp.Connection, commands: Sequence[resp.Command]) -> list[Any]:
        sent.extend(len(command[3]) for command in commands if command[0] == "SETRANGE")
        return await original(self, commands)

    monkeypatch.setattr(resp.Connection, "pipeline", counting)
    digest, data = blob("parts", 10_500)
    await backend.put_blob(digest, data, holder="k")
    assert sent == [1000] * 10 + [500]
    assert await backend.get_blob(digest) == data
    await backend.put_blob(digest, data, holder="k2")  # stored: the bytes do not travel again
    assert len(sent) == 11
    assert await raw.keys(f"{{{PREFIX}/{digest}}}:blobpart:*") == []
    assert await raw.ttl(f"{{{PREFIX}/{digest}}}:blob") == -1


async def test_the_parts_of_a_writer_that_died_expire(
    backend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_blobs, "BLOB_CHUNK_BYTES", 1000)
    original = backend._slot_script

    async def dies_before_publishing(name: str, keys: Sequence[str], *args: Any) -> Any:
        if name == "blob_publish":
            raise RuntimeError("the writer died")
        return await original(name, keys, *args)

    monkeypatch.setattr(backend, "_slot_script", dies_before_publishing)
    digest, data = blob("dies", 5000)
    with pytest.raises(RuntimeError):
        await backend.put_blob(digest, data, holder="k")
    [part] = await raw.keys(f"{{{PREFIX}/{digest}}}:blobpart:*")
    assert 0 < await raw.pttl(part) <= 600_000
    assert await raw.exists(f"{{{PREFIX}/{digest}}}:blob") == 0
    assert await backend.get_blob(digest) is None


# -- events --------------------------------------------------------------------------------------


async def test_the_event_list_is_capped_and_read_in_pages(
    redis_url: str, raw: aioredis.Redis
) -> None:
    capped = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX, events_max=10))
    await capped.connect()
    try:
        await watch(capped)
        for index in range(300):  # one list entry per call
            await put(capped, "c", [f"k{index}"], into="w")
            assert await raw.llen(f"{{{PREFIX}}}:events") <= 10 + events_slack(10)
        kept = await capped.events(None, 10_000)
        assert 10 <= len(kept) <= 10 + events_slack(10)  # the oldest dropped a few at a time
        assert kept[-1].key == "k299"
        assert [e.key for e in kept] == [f"k{i}" for i in range(300 - len(kept), 300)]
        # An id that was trimmed away reads on from the oldest event kept.
        assert await capped.events("0/0", 5) == kept[:5]
        assert await capped.events(kept[-1].id) == []
        # After a flush, an id from before it reads the new list from its start.
        await capped.flush()  # which ends the watch too
        await watch(capped)
        await put(capped, "c", ["fresh"], into="w")
        assert [e.key for e in await capped.events(kept[-1].id)] == ["fresh"]
    finally:
        await capped.close()


async def test_events_come_in_pages_of_entries(backend: RedisBackend) -> None:
    await watch(backend)
    for index in range(250):
        await put(backend, "c", [f"k{index}", f"j{index}"], into="w")
    everything = await backend.events(None, 10_000)
    assert [e.key for e in everything] == [f"{x}{i}" for i in range(250) for x in "kj"]
    assert await backend.events(everything[299].id, 201) == everything[300:]


async def test_events_stop_once_nobody_has_read_them_for_events_watch_seconds(
    redis_url: str, raw: aioredis.Redis
) -> None:
    brief = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX, events_watch=0.2))
    await brief.connect()
    try:
        await watch(brief)
        assert 0 < await raw.pttl(f"{{{PREFIX}}}:eventswatched") <= 200
        await put(brief, "c", ["read"], into="w")
        await asyncio.sleep(0.3)  # the watch lapses: time itself is what is tested
        await put(brief, "c", ["unread"], into="w")
        assert [e.key for e in await brief.events()] == ["read"]
    finally:
        await brief.close()


async def test_with_events_off_nothing_is_published(redis_url: str) -> None:
    quiet = RedisBackend(redis_url, settings=Settings(key_prefix=PREFIX, events=False))
    await quiet.connect()
    try:
        await watch(quiet)
        await quiet.join("w", NodeKind.WORKER, None, 60)
        await put(quiet, "c", ["k"], into="w")
        assert await quiet.claim("w") is not None
        await quiet.complete("w", "k", out("k"), cache=True, error="")
        assert await quiet.events() == []
    finally:
        await quiet.close()


# -- lost writes -----------------------------------------------------------------------------------


async def test_a_heartbeat_tells_its_node_of_lost_writes_that_others_beats_hid(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A server restored from an older copy, whose clock other nodes' heartbeats have already
    raised past what this node saw last: the node's own record still shows the older clock."""
    await backend.join("w", NodeKind.WORKER, None, 60)
    first = await backend.heartbeat("w", 60, {"ran": 1})
    second = await backend.heartbeat("w", 60, {"ran": 2})
    assert second.own == first.clock  # nothing lost: the previous own beat, as the node saw it
    assert (await backend.heartbeat("w", 60)).own is None  # the lease keeper's beat: not its own
    # The restore: the node's record as it was before its last beat; the clock raised since.
    await raw.hset(f"{{{PREFIX}}}:node:w", "own", first.clock)
    await raw.incrby(f"{{{PREFIX}}}:clock", 100)
    third = await backend.heartbeat("w", 60, {"ran": 3})
    assert third.clock > second.clock  # the grid's clock alone would not tell
    assert third.own is not None
    assert 0 < third.own < second.clock
