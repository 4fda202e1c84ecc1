"""Each node's notifications in a hash slot of its own (`spread_notifications`, see
`girder/backends/redis_inboxes.py`): where they live, processes with and without the setting
on one grid, a crash between a completion and its post, and what a node leaves behind.
The conformance suite runs with the setting too (test_conformance_redis.py and
test_conformance_cluster.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from backends import connected
from processes import wait_until

from girder.backends.base import Completion, NodeKind, Notification, Submitted
from girder.backends.redis import RedisBackend
from girder.backends.redis_inboxes import OwnInboxes
from girder.backends.redis_keys import RedisKeys
from girder.testing.conformance import LONG, new, out, put
from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer

pytestmark = pytest.mark.redis

PREFIX = "spreadnotes"
PATIENCE = 10.0


@pytest.fixture
async def spreading(redis_url: str) -> AsyncIterator[RedisBackend]:
    async with connected(redis_url, key_prefix=PREFIX, spread_notifications=True) as backend:
        yield backend


@pytest.fixture
async def plain(redis_url: str) -> AsyncIterator[RedisBackend]:
    async with connected(redis_url, key_prefix=PREFIX) as backend:
        yield backend


def own_inbox(node: str) -> str:
    return "{" + PREFIX + ":node:" + node + "}:inbox"


def grid_inbox(node: str) -> str:
    return "{" + PREFIX + "}:inbox:" + node


async def claim_and_complete(backend: RedisBackend, worker: str, key: str) -> None:
    claimed = await backend.claim(worker)
    assert claimed is not None
    assert claimed.key == key
    await backend.complete(worker, key, out(key), cache=True)


async def test_a_node_with_the_setting_is_told_in_its_own_slot_whoever_completes(
    spreading: RedisBackend, plain: RedisBackend, raw: aioredis.Redis
) -> None:
    """Two waiters of one key, one with its inbox in its own slot and one without, and a worker
    without the setting: each waiter is told where it waits, once."""
    await spreading.join("own", NodeKind.CLIENT, None, LONG)
    await plain.join("grid", NodeKind.CLIENT, None, LONG)
    await plain.join("w", NodeKind.WORKER, None, LONG)
    await put(spreading, "own", ["k"], into="w")
    await put(plain, "grid", ["k"], into="w")
    await claim_and_complete(plain, "w", "k")
    assert await raw.lrange(own_inbox("own"), 0, -1) == [b"1:k" + out("k")]
    assert await raw.exists(grid_inbox("own")) == 0
    assert await raw.lrange(grid_inbox("grid"), 0, -1) == [b"1:k" + out("k")]
    assert await raw.exists(own_inbox("grid")) == 0
    assert 0 < await raw.pttl(own_inbox("own")) <= 3600 * 1000
    assert await spreading.take_notifications("own", PATIENCE) == [Notification("k", out("k"))]
    assert await plain.take_notifications("grid", PATIENCE) == [Notification("k", out("k"))]
    assert await spreading.take_notifications("own", 0.05) == []


async def test_partial_answers_and_cancellation_notices_reach_an_own_inbox(
    spreading: RedisBackend, plain: RedisBackend
) -> None:
    """A partial answer published by a worker without the setting, the notice that a running
    key is cancelled (to its owner, a worker with the setting) and a request to cancel a job
    (to its owner, a client with the setting)."""
    await spreading.join("c", NodeKind.CLIENT, None, LONG)
    await spreading.join("w", NodeKind.WORKER, None, LONG)
    await plain.join("p", NodeKind.WORKER, None, LONG)
    await put(spreading, "c", ["s"], into="p")
    assert (await plain.claim("p")) is not None
    assert await plain.publish("p", "s", b"half")
    assert await spreading.take_notifications("c", PATIENCE) == [
        Notification("s", b"half", partial=True)
    ]
    await spreading.submit("c", [new("r")], into="w", on_top=True, job="job")
    assert (await spreading.claim("w")) is not None
    step = await plain.cancel("x", "job", roots=["r"])
    assert step.cancelled == ("r",)
    assert await spreading.take_notifications("w", PATIENCE) == [
        Notification("r", b"", cancelled_by="job")
    ]
    assert await plain.ask_to_cancel("c", "job")
    assert await spreading.take_notifications("c", PATIENCE) == [
        Notification("", b"", cancelled_by="job")
    ]


async def test_a_completion_whose_post_never_came_is_found_by_submitting_again(
    spreading: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completing process dies between the completion (grid slot) and its post (the
    waiter's slot): the waiter is not told, and when it submits the key again, as a waiter
    does for what it waited long for, it gets the cached outcome at once."""
    await spreading.join("c", NodeKind.CLIENT, None, LONG)
    await spreading.join("w", NodeKind.WORKER, None, LONG)
    await put(spreading, "c", ["k"], into="w")

    async def died(self: OwnInboxes, *args: object) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(OwnInboxes, "post", died)
    with pytest.raises(asyncio.CancelledError):
        await claim_and_complete(spreading, "w", "k")
    monkeypatch.undo()
    assert await spreading.take_notifications("c", 0.2) == []
    assert await put(spreading, "c", ["k"], into="w") == [Submitted("k", out("k"))]


async def test_what_a_node_leaves_in_its_own_slot_goes_when_it_leaves_or_is_reaped(
    spreading: RedisBackend, raw: aioredis.Redis
) -> None:
    """A node that leaves deletes its own inbox, taken list and post tokens; a reaper deletes
    those of the nodes it reaps; `flush` deletes any left (here: one posted after a leave)."""
    for node in ("gone", "dead"):
        await spreading.join(node, NodeKind.CLIENT, None, 0.5 if node == "dead" else LONG)
    await spreading.join("w", NodeKind.WORKER, None, LONG)
    await spreading.join("reaper", NodeKind.CLIENT, None, LONG)
    await put(spreading, "gone", ["a"], into="w")
    await put(spreading, "dead", ["a"], into="w")
    await claim_and_complete(spreading, "w", "a")
    for node in ("gone", "dead"):
        assert await raw.exists(own_inbox(node)) == 1
    await spreading.take_notifications("gone", 0)  # something in `taken` too
    assert await raw.exists("{" + PREFIX + ":node:gone}:taken") == 1
    await spreading.leave("gone")
    assert await raw.keys("{" + PREFIX + ":node:gone}*") == []

    async def reaped() -> bool:
        await spreading.heartbeat("reaper", LONG)
        return "dead" in (await spreading.reap("reaper", 3)).dead

    await wait_until(reaped, PATIENCE)
    assert await raw.keys("{" + PREFIX + ":node:dead}*") == []

    await raw.rpush(own_inbox("late"), b"1:a")  # a post that came after its node left
    await spreading.flush()
    assert await raw.keys("*") == []


async def test_garbage_in_an_own_inbox_is_deleted_and_the_node_still_hears(
    spreading: RedisBackend, raw: aioredis.Redis
) -> None:
    await spreading.join("c", NodeKind.CLIENT, None, LONG)
    await spreading.join("w", NodeKind.WORKER, None, LONG)
    await raw.set(own_inbox("c"), "garbage")
    assert await spreading.take_notifications("c", 0.05) == []
    await put(spreading, "c", ["k"], into="w")
    await raw.set(own_inbox("c"), "garbage")  # now the post finds it
    await claim_and_complete(spreading, "w", "k")
    assert await spreading.take_notifications("c", PATIENCE) == [Notification("k", out("k"))]


@pytest.mark.slow
async def test_own_inboxes_spread_over_the_primaries_of_a_cluster(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """60 clients with their inboxes in their own slots wait for keys of one worker: the
    inboxes land on every primary, none in the grid's slot, and each client hears its own."""
    clients = [f"client-{i}" for i in range(60)]
    settings = {"key_prefix": PREFIX, "spread_notifications": True}
    async with connected(redis_cluster_url, **settings) as backend:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        for client in clients:
            await backend.join(client, NodeKind.CLIENT, None, LONG)
            await put(backend, client, [client + "-key"], into="w")
        completions = []
        while (claimed := await backend.claim("w")) is not None:
            completions.append(Completion(claimed.key, out(claimed.key), True))
        await backend.complete_and_claim("w", completions, claim=0)
        holders = []
        for primary in redis_cluster.primaries():
            raw = aioredis.Redis(host="127.0.0.1", port=primary.port)
            try:
                inboxes = raw.scan_iter(match="{" + PREFIX + ":node:*}:inbox")
                holders.append(len([name async for name in inboxes]))
                assert not [n async for n in raw.scan_iter(match="{" + PREFIX + "}:inbox:*")]
            finally:
                await raw.aclose()
        assert sum(holders) == len(clients)
        assert min(holders) >= 5, holders  # 20 each, give or take the hash
        for client in clients:
            key = client + "-key"
            assert await backend.take_notifications(client, PATIENCE) == [
                Notification(key, out(key))
            ]
        await backend.flush()


def test_the_key_names_of_own_inboxes_are_told_apart_from_other_keys() -> None:
    keys = RedisKeys(PREFIX)
    mine = [keys.own_inbox("n"), keys.own_taken("n"), keys.own_posted("n")]
    assert all(map(keys.is_own_inbox_key, mine))
    others = [keys.own_migrating("n"), keys.result(hashlib.sha256(b"x").hexdigest()), keys.leases]
    assert not any(map(keys.is_own_inbox_key, others))
    assert not RedisKeys(PREFIX + "x").is_own_inbox_key(keys.own_inbox("n"))


@pytest.mark.slow
async def test_a_node_hears_everything_once_while_its_own_slot_moves(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """A client's own slot moves to another primary while it waits and a worker completes
    what it waits for: a post that comes while the slot's keys are split between the two is
    refused before it runs (its migration probe), waits the move out and runs whole on the
    target, and the client, whose wait was on the source, hears every outcome once."""
    settings = {"key_prefix": PREFIX, "spread_notifications": True}
    async with connected(redis_cluster_url, **settings) as backend:
        await backend.join("c", NodeKind.CLIENT, None, LONG)
        await backend.join("w", NodeKind.WORKER, None, LONG)
        keys = ["k0", "k1", "k2"]
        await put(backend, "c", keys, into="w", on_top=False)
        heard: list[Notification] = []

        async def listen() -> None:
            while len(heard) < len(keys):
                heard.extend(await backend.take_notifications("c", 0.5))

        listening = asyncio.create_task(listen())
        await claim_and_complete(backend, "w", "k0")  # the slot now holds posted tokens
        await wait_until(lambda: _heard(heard, 1), PATIENCE)
        slot = redis_cluster.keyslot(own_inbox("c"))
        target = next(s for s in redis_cluster.primaries() if s is not redis_cluster.owner(slot))
        source = redis_cluster.begin_slot_move(slot, target)
        redis_cluster.migrate_keys(source, target, ["{" + PREFIX + ":node:c}:posted"])
        source.command("CONFIG", "RESETSTAT")
        completing = asyncio.create_task(claim_and_complete(backend, "w", "k1"))
        await wait_until(lambda: _rejected(source, "evalsha"), PATIENCE)
        assert not completing.done()  # its post waits for the move
        left = source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "100")
        assert isinstance(left, list)
        redis_cluster.migrate_keys(source, target, [str(key) for key in left])
        redis_cluster.end_slot_move(slot, target)
        await asyncio.wait_for(completing, PATIENCE)
        await claim_and_complete(backend, "w", "k2")
        await asyncio.wait_for(listening, PATIENCE)
        assert sorted(note.key for note in heard) == keys
        assert all(note.outcome == out(note.key) for note in heard)
        assert await backend.take_notifications("c", 0.2) == []
        assert redis_cluster.owner(slot) is target
        await backend.flush()


async def _heard(heard: list[Notification], count: int) -> bool:
    return len(heard) >= count


async def _rejected(server: RedisServer, command: str) -> bool:
    """Whether `server` refused a call of `command` before it ran (a redirection) since its
    last RESETSTAT."""
    stats = server.info("commandstats").get(f"cmdstat_{command}", "")
    fields = dict(field.split("=", 1) for field in stats.split(",") if "=" in field)
    return int(fields.get("rejected_calls", "0")) > 0
