"""The steps of the sharded layout: the records' (`girder.backends.redis_records`: each request
key's record in its own slot, worked on by one-slot scripts that decide nothing about other keys
or nodes) and the pools' (`girder.backends.redis_pools`: list work that reads no record). Driven
by hand on a single server and on a real Redis Cluster (3 primaries, 3 replicas): what each step
answers, that each is harmless sent twice (a reply lost and the step sent again), that a crash
between a pool's step and a record's leaves what the reaper finishes, and that a forged record
(garbage of the wrong type, a status nobody wrote) harms no other key."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from girder.backends.cluster import key_slot
from girder.backends.redis import RedisBackend
from girder.backends.redis_keys import (
    CHUNK_BYTES,
    F_CRASHES,
    F_OWNER,
    F_STATUS,
    F_SUBMITTED,
    RedisKeys,
)
from girder.backends.redis_records import (
    RecordOutcome,
    RecordSteps,
    root_field,
    waited_by_field,
    waits_field,
)
from girder.config import Settings
from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer

pytestmark = [pytest.mark.redis]

PREFIX = "recordsteps"
KEYS = RedisKeys(PREFIX)


def request_key() -> str:
    return os.urandom(32).hex()


@pytest.fixture(params=["redis", "cluster"])
async def servers(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, list[RedisServer]]]:
    """(backend URL, the servers that hold its keys: the primaries of a cluster)."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_url"), [request.getfixturevalue("redis_server")]
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        yield request.getfixturevalue("redis_cluster_url"), cluster.primaries()


@pytest.fixture
async def backend(servers: tuple[str, list[RedisServer]]) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(servers[0], settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    yield backend
    for server in servers[1]:  # the records are no state the grid's flush knows of yet
        for name in server.command("KEYS", "{" + PREFIX + ":*"):  # type: ignore[union-attr]
            server.command("DEL", str(name))
    await backend.flush()
    await backend.close()


@pytest.fixture
def steps(backend: RedisBackend) -> RecordSteps:
    return RecordSteps(KEYS, backend._access)


def server_of(servers: list[RedisServer], key: str) -> RedisServer:
    """The server that serves key's own slot (the others answer MOVED)."""
    for server in servers:
        try:
            server.command("EXISTS", KEYS.own_record(key))
        except RuntimeError as exc:
            if "MOVED" in str(exc):
                continue
            raise
        return server
    raise AssertionError(f"no server serves the slot of {key}")


def record_of(servers: list[RedisServer], key: str) -> dict[str, str]:
    """Key's record in its own slot ({} when it has none)."""
    reply = server_of(servers, key).command("HGETALL", KEYS.own_record(key))
    assert isinstance(reply, list)
    return dict(zip(map(str, reply[::2]), map(str, reply[1::2]), strict=True))


async def test_records_spread_over_the_primaries(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    keys = [request_key() for _ in range(60)]
    answers = await steps.submit("client", [(key, b"args") for key in keys], job="j")
    assert {answer.status for answer in answers} == {"pending"}
    holders = {server_of(servers[1], key).port for key in keys}
    assert len(holders) == len(servers[1])  # every primary holds some (one server: itself)
    assert len({key_slot(KEYS.own_record(key)) for key in keys}) > 1


async def test_submit_claim_complete_in_turn(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    key, parent = request_key(), request_key()
    [first] = await steps.submit("client", [(key, b"payload")], job="job1")
    assert (first.status, first.shared) == ("pending", False)
    [again] = await steps.submit("worker", [(key, b"other")], waiter=parent)
    assert (again.status, again.shared) == ("pending", True)  # joins the pending run

    [claimed] = await steps.claim("worker", [key])
    assert (claimed.status, claimed.payload, claimed.crashed) == ("claimed", b"payload", False)
    [elsewhere] = await steps.claim("thief", [key])
    assert (elsewhere.status, elsewhere.owner) == ("running", "worker")
    [joined] = await steps.submit("late", [(key, b"x")])
    assert (joined.status, joined.owner) == ("running", "worker")

    outcome = RecordOutcome(key, b"v" * (3 * CHUNK_BYTES + 5), ttl_ms=60_000, function_id="7")
    [done] = await steps.complete("worker", [outcome])
    assert done.status == "done"
    assert sorted(done.waiters) == ["client", "late"]  # all but the completing node
    assert done.waited_by == [parent]
    record = record_of(servers[1], key)
    assert record[F_STATUS] == "d"
    assert record["f"] == "7"
    assert F_OWNER not in record
    assert not any(name.startswith("i:") for name in record)
    [cached] = await steps.submit("reader", [(key, b"x")])
    assert (cached.status, cached.outcome) == ("done", outcome.outcome)
    ttl = server_of(servers[1], key).command("PTTL", KEYS.own_record(key))
    assert isinstance(ttl, str)
    assert 0 < int(ttl) <= 60_000


async def test_every_step_sent_twice_changes_nothing_more(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    key = request_key()
    for _ in range(2):
        [answer] = await steps.submit("client", [(key, b"p")], job="j")
    assert answer.status == "pending"
    for _ in range(2):  # the first reply lost: the claimer gets its claim again
        [claimed] = await steps.claim("worker", [key])
        assert (claimed.status, claimed.payload) == ("claimed", b"p")
    [first] = await steps.complete("worker", [RecordOutcome(key, b"out")])
    [second] = await steps.complete("worker", [RecordOutcome(key, b"other")])
    assert (first.status, first.waiters, second.status) == ("done", ["client"], "running")
    [cached] = await steps.submit("reader", [(key, b"p")])
    assert cached.outcome == b"out"  # the second completion changed nothing


async def test_requeue_counts_a_crash_once_and_hands_over_at_the_limit(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    key = request_key()
    await steps.submit("client", [(key, b"p")])
    await steps.claim("dead1", [key])
    assert await steps.requeue("dead1", [key], max_crashes=2) == ["pending"]
    assert await steps.requeue("dead1", [key], max_crashes=2) == ["pending"]
    assert record_of(servers[1], key)[F_CRASHES] == "1"  # sent again: counted once
    [claimed] = await steps.claim("dead2", [key])
    assert claimed.crashed
    assert await steps.requeue("someone", [key]) == ["gone"]  # runs under another: left
    for _ in range(2):  # at the limit it stays under the dead owner, reported again if resent
        assert await steps.requeue("dead2", [key], max_crashes=2) == ["crashed"]
        record = record_of(servers[1], key)
        assert (record[F_STATUS], record[F_OWNER], record[F_CRASHES]) == ("r", "dead2", "2")
    # the reap's grid step put it in the reaper's running set: the record is handed over
    assert await steps.hand_over("dead2", "reaper", [key]) == [True]
    assert await steps.hand_over("dead2", "reaper", [key]) == [True]  # sent again
    assert await steps.hand_over("other", "someone", [key]) == [False]
    assert record_of(servers[1], key)[F_OWNER] == "reaper"
    # freeing (no crash counted): the reaper's run goes back to pending
    assert await steps.requeue("reaper", [key]) == ["pending"]
    assert record_of(servers[1], key)[F_CRASHES] == "2"


async def test_an_orphan_goes_only_as_the_sweep_read_it(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    """record_orphan deletes a record only in the status, with the mark (submission token, or
    owner) and with no waiting node but those the sweep saw; sent twice, it finds nothing the
    second time."""
    pending, running = request_key(), request_key()
    await steps.submit("first", [(pending, b"p"), (running, b"p")])
    await steps.claim("owner", [running])
    token = record_of(servers[1], pending)[F_SUBMITTED].encode()
    assert await steps.waiting_nodes([pending, running, request_key()]) == [
        ["first"],
        ["first"],
        [],
    ]
    refused = [
        (pending, "r", token, ["first"]),  # another status
        (pending, "p", b"another submission", ["first"]),
        (running, "r", b"another owner", ["first"]),
        (running, "r", b"owner", []),  # a waiting node the sweep did not see
    ]
    assert await steps.drop_orphans(refused) == 0
    await steps.submit("late", [(pending, b"p")])  # submitted again since the sweep read it
    assert await steps.drop_orphans([(pending, "p", token, ["first"])]) == 0
    assert await steps.drop_orphans([(pending, "p", token, ["first", "late"])]) == 1
    assert await steps.drop_orphans([(running, "r", b"owner", ["first"])]) == 1
    assert await steps.drop_orphans([(running, "r", b"owner", ["first"])]) == 0  # sent again
    assert await steps.read([pending, running], F_STATUS) == [[None], [None]]
    forged = request_key()
    server_of(servers[1], forged).command("SET", KEYS.own_record(forged), "not a hash")
    assert await steps.drop_orphans([(forged, "p", b"", [])]) == 0


async def test_drop_forgets_done_records_only(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    done, other, pending = request_key(), request_key(), request_key()
    await steps.submit("c", [(done, b"p"), (other, b"p"), (pending, b"p")])
    await steps.claim("w", [done, other])
    await steps.complete("w", [RecordOutcome(done, b"v", function_id="1")])
    await steps.complete("w", [RecordOutcome(other, b"v", function_id="2")])
    assert await steps.drop([done, other, pending], "1") == [True, False, False]
    assert await steps.drop([done, other, pending]) == [False, True, False]
    assert record_of(servers[1], pending)[F_STATUS] == "p"


async def test_a_completion_by_a_stale_owner_changes_nothing(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    key = request_key()
    await steps.submit("client", [(key, b"p")])
    await steps.claim("old", [key])
    await steps.requeue("old", [key])
    await steps.claim("new", [key])
    [stale] = await steps.complete("old", [RecordOutcome(key, b"late")])
    assert stale.status == "running"
    assert record_of(servers[1], key)[F_OWNER] == "new"
    [done] = await steps.complete("new", [RecordOutcome(key, b"right")])
    assert done.status == "done"
    [gone] = await steps.claim("other", [key])
    assert gone.status == "gone"


async def test_an_uncached_completion_deletes_the_record(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    key = request_key()
    await steps.submit("client", [(key, b"p")])
    await steps.claim("w", [key])
    [done] = await steps.complete("w", [RecordOutcome(key, b"err", cached=False)])
    assert (done.status, done.waiters) == ("done", ["client"])
    assert record_of(servers[1], key) == {}
    [none] = await steps.complete("w", [RecordOutcome(key, b"err", cached=False)])
    assert none.status == "gone"


async def test_partials_go_to_the_waiters_while_the_owner_runs_it(steps: RecordSteps) -> None:
    key = request_key()
    await steps.submit("client", [(key, b"p")])
    assert not (await steps.publish("w", key, b"1")).stored  # not running yet
    await steps.claim("w", [key])
    first = await steps.publish("w", key, b"1")
    assert (first.stored, first.waiters, first.again) == (True, ["client"], False)
    assert (await steps.publish("w", key, b"1")).again
    [late] = await steps.submit("late", [(key, b"p")])
    assert late.partial == b"1"
    assert not (await steps.publish("intruder", key, b"2")).stored


async def test_edges_and_cancellation(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    parent, child, grandchild = request_key(), request_key(), request_key()
    await steps.submit("client", [(parent, b"p")], job="job")
    await steps.claim("w", [parent])
    await steps.submit("w", [(child, b"c")], waiter=parent)
    assert await steps.add_edges(parent, [waits_field(child)]) == [child]
    await steps.claim("w", [child])
    await steps.submit("w", [(grandchild, b"g")], waiter=child)
    assert await steps.add_edges(child, [waits_field(grandchild)]) == [grandchild]
    assert await steps.waits(parent) == [child]  # a cycle walk's step

    top = await steps.cancel("job", parent, root_field("job"))
    assert (top.status, top.owner, top.waits) == ("running", "w", [child])
    assert await steps.waits(parent) == []  # its own edges went
    # the walk drops the other side, then steps on: the child runs too
    mid = await steps.cancel("job", child, waited_by_field(parent))
    assert (mid.status, mid.owner, mid.waits) == ("running", "w", [grandchild])
    low = await steps.cancel("job", grandchild, waited_by_field(child))
    assert (low.status, low.waiters, low.waits) == ("pending", ["w"], [])
    assert record_of(servers[1], grandchild) == {}
    assert (await steps.cancel("job", grandchild)).status == "kept"  # sent again


async def test_a_key_still_needed_is_kept(steps: RecordSteps) -> None:
    key = request_key()
    await steps.submit("a", [(key, b"p")], job="job1")
    await steps.submit("b", [(key, b"p")], job="job2")
    kept = await steps.cancel("job1", key, root_field("job1"))
    assert kept.status == "kept"  # job2 still roots it
    gone = await steps.cancel("job2", key, root_field("job2"))
    assert (gone.status, sorted(gone.waiters)) == ("pending", ["a", "b"])


async def test_forged_records_harm_no_other_key(
    steps: RecordSteps, servers: tuple[str, list[RedisServer]]
) -> None:
    wrong_type, bad_status, good = request_key(), request_key(), request_key()
    await steps.submit("client", [(good, b"fine"), (bad_status, b"p")])
    await steps.submit("client", [(wrong_type, b"p")])
    # garbage: a list where the record goes, and a status nobody wrote
    holder = server_of(servers[1], wrong_type)
    holder.command("DEL", KEYS.own_record(wrong_type))
    holder.command("RPUSH", KEYS.own_record(wrong_type), "junk")
    server_of(servers[1], bad_status).command("HSET", KEYS.own_record(bad_status), F_STATUS, "zz")

    claims = await steps.claim("w", [wrong_type, bad_status, good])
    assert [claim.status for claim in claims] == ["claimed", "claimed", "claimed"]
    # the garbage is deleted and run with an empty payload, which the worker fails as
    # malformed (so whoever waits hears why); the others keep theirs
    assert [claim.payload for claim in claims] == [b"", b"p", b"fine"]
    failed = RecordOutcome(wrong_type, b"malformed", cached=False)
    done = await steps.complete("w", [failed, RecordOutcome(bad_status, b"ok")])
    assert [step.status for step in done] == ["done", "done"]
    [fresh] = await steps.submit("client", [(wrong_type, b"again")])
    assert (fresh.status, fresh.shared) == ("pending", False)  # made anew
    [claimed] = await steps.claim("w", [wrong_type])
    assert claimed.payload == b"again"
    [good_done] = await steps.complete("w", [RecordOutcome(good, b"ok")])
    assert good_done.waiters == ["client"]


async def test_each_step_runs_in_its_keys_slot_alone(steps: RecordSteps) -> None:
    """On a cluster a step that touched another slot would fail; here every key lands on its
    own slot and each step still answers."""
    keys = [request_key() for _ in range(20)]
    await steps.submit("c", [(key, b"p") for key in keys])
    claims = await steps.claim("w", keys)
    assert all(claim.status == "claimed" for claim in claims)
    done = await steps.complete("w", [RecordOutcome(key, key.encode()) for key in keys])
    assert all(step.status == "done" for step in done)
    cached = await steps.submit("r", [(key, b"p") for key in keys])
    assert [answer.outcome for answer in cached] == [key.encode() for key in keys]
