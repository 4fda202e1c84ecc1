"""The sharded records' step of docs/scaling.md, measured before it is built: its hot path as a
prototype, side by side with today's one-slot scripts, on one server and on a 3-primary cluster.

The sharded design puts each request's record in the slot of its own key and splits every
operation on it into steps of one slot each: a submit is (1) the record, in the key's slot,
then (2) the push onto the pool's work list; a claim is (1) the pop into the running set
(journaled), then (2) the record marked running; a completion is (1) the record done, its
waiters taken, then (2) each waiter's notification posted in the waiter's own slot, then (3)
the key dropped from the running set (the next claim rides along). The prototype runs exactly
those steps, as small Lua scripts that read and write what the design says (the record's fields
as today's, the pool's lists in the grid's slot; the key steps of a batch go as one pipeline per
server), with the real `inbox_post` script and `take_notifications` for the notifications. It
leaves out what the hot path does not meet: wait edges and the cycle check, cancellation,
reaping, events (off in every way), moved results.

Six ways run the same flows, in one process, with one worker node and one client node:
`one-slot` (today's scripts, through `RedisBackend`), `fused` (the prototype's steps fused into
one script per operation, the records in the grid's slot: today's layout as lean as the
prototype), `split`, and `fused-full` and `split-full`: the same two with what today's scripts
do besides (see `_PRELUDE`), each part where the split would do it, so that `fused-full` comes
near `one-slot` and `split-full` shows where that work lands. `split-node-full` is
`split-full` with the pools' step by node: each worker's lists in its own slot, and three
workers (on the cluster, one whose slot is on each primary) that take the `single` flow's
requests in turn. The flows:

- `batched` (as W2): rounds of 100 new requests submitted at once; the worker completes the
  previous round's 100 and claims this round's in one call; the client drains its
  notifications;
- `single` (as W1): one request at a time (half as many): submit, claim, complete, the client
  drains.

On the cluster the client is a node whose own inbox is on a primary other than the grid's slot
(as 2 in 3 clients are), so that the grid's primary carries the pool's steps and its share of
the records only.

Two measures of Redis's cost, per primary: `cpu`, the CPU time of the server process (`INFO
cpu`: its scripts, and reading, parsing and answering every call: the measure of capacity), and
`script`, the servers' own time in the script calls (`usec` in `INFO commandstats`, after
`CONFIG RESETSTAT`), which leaves the calls' I/O out but counts a server that waits for a core
mid-script (three servers and the client share this machine's two cores). One JSON line per
flow, layout and way: per request, in all, on the primary of the grid's slot and on each other,
medians over `--runs`.

    .venv/bin/python benchmarks/records_split.py [--requests 2000] [--runs 3] [--layouts cluster3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `girder` of this checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import say
from girder.backends.base import Completion, NewRequest, NodeKind
from girder.backends.cluster import ClusterClient, key_slot, parse_cluster_url
from girder.backends.redis import RedisBackend
from girder.backends.redis_keys import (
    DONE,
    F_CRASHES,
    F_FUNCTION,
    F_MOVER,
    F_OUTCOME,
    F_OWN_WAITER,
    F_OWNER,
    F_PARTIAL,
    F_PAYLOAD,
    F_ROOT,
    F_STATUS,
    PENDING,
    RUNNING,
    RedisKeys,
    chunk_fields,
)
from girder.backends.redis_scripts import OWN_INBOX_TTL_MS, build_slot_scripts
from girder.backends.resp import Pipelined, RedisClient, parse_url
from girder.config import Settings
from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer

_PREFIX = "split"
_PAYLOAD = b"\x80\x05" + b"p" * 60  # about a small real request's signed payload
_OUTCOME = b"\x80\x05" + b"o" * 50
_BATCH = 100
_TTL_MS = 3_600_000

_CONSTANTS = {
    "S": F_STATUS, "PL": F_PAYLOAD, "V": F_OUTCOME, "O": F_OWNER, "C": F_CRASHES,
    "PT": F_PARTIAL, "F": F_FUNCTION, "M": F_MOVER, "W": F_OWN_WAITER, "R": F_ROOT,
    "PENDING": PENDING, "RUNNING": RUNNING, "DONE": DONE,
    "CHUNKS": ", ".join(f"'{field}'" for field in chunk_fields(F_PAYLOAD)[1:]),
}  # fmt: skip

# What every script starts with. FULL (the `-full` ways) adds what today's scripts do besides
# the design's steps, each where the split would do it: every command through a pcall that
# checks its reply (today's `call`), a record read with its payload's every chunk field and
# cleared of them when done, the pool's keys popped, added and counted one at a time, the
# journal trimmed every 16th call, and (fused only: the split needs none) submit journaled.
# Events are off in every way.
_PRELUDE = """
local FULL = $FULL
local function call(command, key, ...)
  if FULL then
    local reply = redis.pcall(command, key, ...)
    if type(reply) == 'table' and reply.err then
      error(reply)
    end
    return reply
  end
  return redis.call(command, key, ...)
end
"""

# The key's-slot steps, as functions of the record's name `r`: each reads what it decides on,
# then writes. The split scripts run one on KEYS[1]; the fused ones run them on records in the
# grid's slot, beside the pool's steps, in one script.
_RECORD_SUBMIT = """
-- submit (1) -> {0, outcome} when done, else {1} to push (new or pending), {2, owner} when it
-- runs (the caller checks that owner is alive).
local function record_submit(r, node, payload, job)
  local s = call('HMGET', r, '$S', '$O', '$PT', '$V')
  if s[1] == '$DONE' and s[4] then
    return {0, s[4]}
  end
  local fields = {'$W' .. node, ''}
  if job ~= '' then
    fields[3], fields[4] = '$R' .. job, ''
  end
  local answer = {1}
  if s[1] == '$RUNNING' then
    answer = {2, s[2]}
  elseif s[1] ~= '$PENDING' then
    fields[#fields + 1], fields[#fields + 2] = '$S', '$PENDING'
    fields[#fields + 1], fields[#fields + 2] = '$PL', payload
  end
  call('HSET', r, unpack(fields))
  return answer
end
"""

_RECORD_CLAIM = """
-- claim (2) -> the payload when the record was pending (now running under node), else false.
local function record_claim(r, node)
  local s
  if FULL then
    s = call('HMGET', r, '$S', '$C', '$O', '$PL', $CHUNKS)
  else
    s = call('HMGET', r, '$S', '$C', '$O', '$PL')
  end
  if s[1] ~= '$PENDING' then
    return false
  end
  call('HSET', r, '$S', '$RUNNING', '$O', node)
  return s[4]
end
"""

_RECORD_COMPLETE = """
-- complete (1) -> the waiters to tell, or false when the key is done or runs under another
-- owner.
local function record_complete(r, node, outcome, fn, ttl_ms)
  local s
  if FULL then
    s = call('HMGET', r, '$S', '$O', '$M', '$F')
  else
    s = call('HMGET', r, '$S', '$O')
  end
  if s[1] == '$DONE' or (s[1] == '$RUNNING' and s[2] ~= node) then
    return false
  end
  local waiters, stale = {}, {'$O', '$C', '$PT', '$PL'}
  if FULL then
    stale = {'$O', '$C', '$PT', '$PL', $CHUNKS}
  end
  for _, field in ipairs(call('HKEYS', r)) do
    local kind = string.sub(field, 1, 2)
    if kind == '$W' then
      waiters[#waiters + 1] = string.sub(field, 3)
    end
    if kind == '$W' or kind == '$R' then
      stale[#stale + 1] = field
    end
  end
  call('HSET', r, '$S', '$DONE', '$F', fn, '$V', outcome)
  call('HDEL', r, unpack(stale))
  call('PEXPIRE', r, ttl_ms)
  return waiters
end
"""

# The pool's steps, in the grid's slot: KEYS work list, wake list, running set, journal, pops.
_POOL_STEPS = """
-- submit (2): push `keys` -> the work list's length.
local function pool_push(keys)
  local length = call('RPUSH', KEYS[1], unpack(keys))
  if call('LLEN', KEYS[2]) == 0 then
    call('RPUSH', KEYS[2], 1)
  end
  return length
end

-- Pop up to `count` keys into the running set, one at a time as today's `claim` does.
local function pop_one_by_one(node, count)
  local popped = {}
  for _ = 1, count do
    local key = call('RPOP', KEYS[1])
    if not key then
      break
    end
    call('SADD', KEYS[3], key)
    call('HINCRBY', KEYS[5], node, 1)
    popped[#popped + 1] = key
  end
  return popped
end

-- Store `reply` in the journal under `token` (and trim it every 16th call, as today).
local function journal(token, reply)
  call('HSET', KEYS[4], token, cmsgpack.pack(reply))
  if FULL and tonumber(token) % 16 == 0 then
    for _, old in ipairs(call('HKEYS', KEYS[4])) do
      if tonumber(old) < tonumber(token) then
        call('HDEL', KEYS[4], old)
      end
    end
  end
end

-- complete (3) and claim (1): drop the keys `done` from the running set, pop up to `count`
-- into it -> the keys popped (journaled under token).
local function pool_claim(node, token, count, done)
  local popped
  if FULL then
    for _, key in ipairs(done) do
      call('SREM', KEYS[3], key)
    end
    popped = pop_one_by_one(node, count)
  else
    if #done > 0 then
      call('SREM', KEYS[3], unpack(done))
    end
    popped = count > 0 and call('RPOP', KEYS[1], count) or false
    if not popped then
      return {}
    end
    call('SADD', KEYS[3], unpack(popped))
    call('HINCRBY', KEYS[5], node, #popped)
  end
  if #popped > 0 then
    journal(token, popped)
  end
  return popped
end
"""

_SPLIT_SCRIPTS = {
    "record_submit": _RECORD_SUBMIT + "return record_submit(KEYS[1], ARGV[1], ARGV[2], ARGV[3])",
    "record_claim": _RECORD_CLAIM + "return record_claim(KEYS[1], ARGV[1])",
    "record_complete": _RECORD_COMPLETE
    + "return record_complete(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])",
    "pool_push": _POOL_STEPS + "return pool_push(ARGV)",
    "pool_claim": _POOL_STEPS
    + "return pool_claim(ARGV[1], ARGV[2], tonumber(ARGV[3]), {unpack(ARGV, 4)})",
}

# The same steps fused into one script per operation, the records in the grid's slot: today's
# layout. KEYS[6] names a record up to its key, KEYS[7] an inbox in the grid's slot up to its
# node; KEYS[8] and KEYS[9] are the function table and the departed nodes (FULL: today's
# completion reads the function's id once per call, and whether each waiter departed).
_FUSED_SCRIPTS = {
    "fused_submit": _RECORD_SUBMIT
    + _POOL_STEPS
    + """
-- ARGV node, token, payload, job, then the keys.
local pushed, answers = {}, {}
for i = 5, #ARGV do
  answers[#answers + 1] = record_submit(KEYS[6] .. ARGV[i], ARGV[1], ARGV[3], ARGV[4])
  if answers[#answers][1] == 1 then
    pushed[#pushed + 1] = ARGV[i]
  end
end
if #pushed > 0 then
  pool_push(pushed)
end
if FULL then
  journal(ARGV[2], answers)
end
""",
    "fused_complete_and_claim": _RECORD_COMPLETE
    + _RECORD_CLAIM
    + _POOL_STEPS
    + """
-- ARGV node, token, how many to claim, outcome, function id, ttl_ms, the keys done -> the
-- keys claimed.
local node, done = ARGV[1], {unpack(ARGV, 7)}
if FULL and #done > 0 then
  call('HGET', KEYS[8], 'n:f') -- the function's id
end
for _, key in ipairs(done) do
  for _, waiter in ipairs(record_complete(KEYS[6] .. key, node, ARGV[4], ARGV[5], ARGV[6]) or {}) do
    if not FULL or not call('ZSCORE', KEYS[9], waiter) then -- departed?
      call('RPUSH', KEYS[7] .. waiter, #key .. ':' .. key .. ARGV[4])
    end
  end
end
local claimed, journaled = {}, {}
for _, key in ipairs(pool_claim(node, ARGV[2], tonumber(ARGV[3]), done)) do
  local payload = record_claim(KEYS[6] .. key, node)
  if payload then
    claimed[#claimed + 1] = key
    journaled[#journaled + 1], journaled[#journaled + 2] = key, payload
  end
end
if FULL and #journaled > 0 then
  journal(ARGV[2], journaled) -- as today, with the payloads
end
return claimed
""",
}


def _lua(source: str, *, full: bool) -> str:
    """`_PRELUDE` and `source`, with each `$NAME` of `_CONSTANTS` spelled as girder spells it
    and `$FULL` as `full`."""
    source = _PRELUDE + source
    constants = _CONSTANTS | {"FULL": "true" if full else "false"}
    for name, value in sorted(constants.items(), key=lambda item: -len(item[0])):
        source = source.replace("$" + name, value)
    return source


Owners = Callable[[str], int]
"""The primary that serves a key (its number: what to pipeline together)."""


def one_server(key: str) -> int:
    return 0


def cluster_owners(server: RedisServer) -> Owners:
    """Owners as `server` sees the slot map now (a benchmark's cluster does not change)."""
    reply = server.command("CLUSTER", "SLOTS")
    assert isinstance(reply, list)
    owner = [0] * 16384
    for row in reply:
        assert isinstance(row, list)
        assert isinstance(row[2], list)
        for slot in range(int(str(row[0])), int(str(row[1])) + 1):
            owner[slot] = int(str(row[2][1]))
    return lambda key: owner[key_slot(key)]


class Prototype:
    """The prototype's scripts, run by SHA on the primary of their first key's slot; a batch
    of one-key scripts goes as one pipeline per primary."""

    def __init__(
        self,
        url: str,
        backend: RedisBackend,
        scripts: dict[str, str],
        *,
        owners: Owners,
        full: bool,
        by_node: bool = False,
    ) -> None:
        self.owners = owners
        self.by_node = by_node
        anchor = RedisKeys(_PREFIX).leases
        self.redis: RedisClient | ClusterClient = (
            ClusterClient(parse_cluster_url(url), anchor=anchor)
            if url.startswith("redis+cluster")
            else RedisClient(parse_url(url))
        )
        self.backend = backend
        self.keys = RedisKeys(_PREFIX)
        self.scripts = {name: _lua(source, full=full) for name, source in scripts.items()}
        self.shas = {
            name: hashlib.sha1(source.encode()).hexdigest() for name, source in self.scripts.items()
        }
        self.tokens = itertools.count(1)

    def at(self, key: str) -> Pipelined:
        return self.redis.at(key) if isinstance(self.redis, ClusterClient) else self.redis

    def pool_keys(self, node: str) -> list[str]:
        """The pool's keys for `node`'s lists: in the grid's slot, or with `by_node` in the
        node's own slot (the pools' step of docs/scaling.md)."""
        if self.by_node:
            tag = "{" + _PREFIX + ":node:" + node + "}:"
            return [tag + name for name in ("work", "wake", "running", "journal", "pops")]
        keys = self.keys
        running = keys.base + "running:" + node
        return [keys.work(node), keys.wake(node), running, keys.journal(node), keys.pops]

    async def script(self, name: str, keys: Sequence[str], *args: str | bytes | int) -> Any:
        command = ("EVALSHA", self.shas[name], len(keys), *keys, *args)
        [reply] = await self.at(keys[0]).pipeline([command])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def per_key(self, name: str, keys: Sequence[str], *args: str | bytes | int) -> list[Any]:
        """Script `name` once per key (its only key), with `args`: one pipeline per primary."""
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(self.owners(key), []).append(index)
        sha, replies = self.shas[name], [None] * len(keys)

        async def run(indexes: list[int]) -> None:
            commands = [("EVALSHA", sha, 1, keys[i], *args) for i in indexes]
            for index, reply in zip(
                indexes, await self.at(keys[indexes[0]]).pipeline(commands), strict=True
            ):
                if isinstance(reply, Exception):
                    raise reply
                replies[index] = reply

        await asyncio.gather(*(run(indexes) for indexes in groups.values()))
        return replies

    async def take(self, node: str) -> int:
        return len(await self.backend.take_notifications(node, 0))

    def close(self) -> None:
        self.redis.close()


class Split(Prototype):
    """The records in their keys' slots, the pool's lists in the grid's, the notifications in
    the waiters' own slots: every step a script of one slot."""

    def __init__(
        self, url: str, backend: RedisBackend, *, owners: Owners, full: bool, by_node: bool
    ) -> None:
        super().__init__(url, backend, _SPLIT_SCRIPTS, owners=owners, full=full, by_node=by_node)
        inbox_post = build_slot_scripts()["inbox_post"]
        self.scripts["inbox_post"] = inbox_post.source
        self.shas["inbox_post"] = inbox_post.sha

    def record(self, key: str) -> str:
        return "{" + _PREFIX + ":" + key + "}:r"

    async def submit(self, node: str, keys: Sequence[str], into: str) -> None:
        records = [self.record(key) for key in keys]
        answers = await self.per_key("record_submit", records, node, _PAYLOAD, "j")
        pushed = [key for key, answer in zip(keys, answers, strict=True) if answer[0] == 1]
        if pushed:
            await self.script("pool_push", self.pool_keys(into), *pushed)

    async def complete_and_claim(self, node: str, done: Sequence[str], claim: int) -> list[str]:
        records = [self.record(key) for key in done]
        told = await self.per_key("record_complete", records, node, _OUTCOME, "1", _TTL_MS)
        notes: dict[str, list[bytes]] = {}
        for key, waiters in zip(done, told, strict=True):
            for waiter in waiters or []:
                note = f"{len(key)}:{key}".encode() + _OUTCOME
                notes.setdefault(waiter.decode(), []).append(note)
        await asyncio.gather(*(self.post(waiter, batch) for waiter, batch in notes.items()))
        token = str(next(self.tokens))
        popped = await self.script("pool_claim", self.pool_keys(node), node, token, claim, *done)
        keys = [key.decode() for key in popped]
        payloads = await self.per_key("record_claim", [self.record(k) for k in keys], node)
        return [key for key, payload in zip(keys, payloads, strict=True) if payload is not None]

    async def post(self, node: str, notes: list[bytes]) -> None:
        keys = self.keys
        slot = [keys.own_inbox(node), keys.own_posted(node), keys.own_migrating(node)]
        token = str(next(self.tokens))
        await self.script("inbox_post", slot, OWN_INBOX_TTL_MS, token, *notes)


class Fused(Prototype):
    """The same steps as `Split`, fused into one script per operation in the grid's slot."""

    def __init__(self, url: str, backend: RedisBackend, *, owners: Owners, full: bool) -> None:
        super().__init__(url, backend, _FUSED_SCRIPTS, owners=owners, full=full)

    def grid_keys(self, node: str) -> list[str]:
        keys = self.keys
        departed = keys.base + "departed"
        return [*self.pool_keys(node), keys.record(""), keys.inbox(""), keys.functions, departed]

    async def submit(self, node: str, keys: Sequence[str], into: str) -> None:
        token = str(next(self.tokens))
        await self.script("fused_submit", self.grid_keys(into), node, token, _PAYLOAD, "j", *keys)

    async def complete_and_claim(self, node: str, done: Sequence[str], claim: int) -> list[str]:
        token = str(next(self.tokens))
        args: list[str | bytes | int] = [node, token, claim, _OUTCOME, "1", _TTL_MS, *done]
        claimed = await self.script("fused_complete_and_claim", self.grid_keys(node), *args)
        return [key.decode() for key in claimed]


class OneSlot:
    """Today's scripts, through `RedisBackend`."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    async def submit(self, node: str, keys: Sequence[str], into: str) -> None:
        requests = [NewRequest(key, _PAYLOAD) for key in keys]
        await self.backend.submit(node, requests, into=into, on_top=True, job="j")

    async def complete_and_claim(self, node: str, done: Sequence[str], claim: int) -> list[str]:
        completions = [
            Completion(key, _OUTCOME, cache=True, ttl=_TTL_MS / 1000, function="f") for key in done
        ]
        claimed = await self.backend.complete_and_claim(node, completions, claim=claim)
        return [found.key for found in claimed]

    async def take(self, node: str) -> int:
        return len(await self.backend.take_notifications(node, 0))


Way = Split | Fused | OneSlot


def request_keys(start: int, count: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + count)]


async def batched(way: Way, keys: list[str], client: str, workers: list[str]) -> None:
    """Rounds of `_BATCH` keys, all to the first worker."""
    worker, previous = workers[0], list[str]()
    for start in range(0, len(keys), _BATCH):
        batch = keys[start : start + _BATCH]
        await way.submit(client, batch, worker)
        claimed = await way.complete_and_claim(worker, previous, len(batch))
        assert sorted(claimed) == sorted(batch), "the worker claimed other keys than submitted"
        await way.take(client)
        previous = claimed
    await way.complete_and_claim(worker, previous, 0)
    await way.take(client)


async def single(way: Way, keys: list[str], client: str, workers: list[str]) -> None:
    """One key at a time, to the workers in turn."""
    for key, worker in zip(keys, itertools.cycle(workers)):
        await way.submit(client, [key], worker)
        claimed = await way.complete_and_claim(worker, [], 1)
        assert claimed == [key], "the worker claimed another key than submitted"
        await way.complete_and_claim(worker, claimed, 0)
        assert await way.take(client) == 1, "the client was not told"


def cpu_usec(server: RedisServer) -> float:
    """The CPU time the server process has used (user and system): its scripts, and the
    reading, parsing and answering of every call, which script times leave out."""
    cpu = server.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


def script_usec(server: RedisServer) -> float:
    """The server time of its script calls since the last RESETSTAT."""
    total = 0.0
    for name, fields in server.info("commandstats").items():
        if name in ("cmdstat_evalsha", "cmdstat_eval"):
            stats = dict(field.split("=", 1) for field in fields.split(","))
            total += float(stats["usec"])
    return total


async def measure(
    primaries: list[RedisServer],
    url: str,
    layout: str,
    client: str,
    *,
    workers: list[str],
    owners: Owners,
    requests: int,
    runs: int,
) -> None:
    """Each run runs every flow every way in turn (noise falls on all alike). `primaries`: the
    primary that serves the grid's slot first; `client`: the client node's name; `workers`:
    the workers of the `split-node` way (the others have one, `w`)."""
    ways: dict[str, Way] = {}
    names = ("one-slot", "fused", "split", "fused-full", "split-full", "split-node-full")
    for name in names:
        spread = name.startswith("split")
        settings = Settings(events=False, key_prefix=_PREFIX, spread_notifications=spread)
        backend = RedisBackend(url, settings=settings)
        await backend.connect()
        full, by_node = name.endswith("-full"), "-node" in name
        ways[name] = (
            OneSlot(backend)
            if name == "one-slot"
            else Split(url, backend, owners=owners, full=full, by_node=by_node)
            if spread
            else Fused(url, backend, owners=owners, full=full)
        )
    for way in ways.values():
        if isinstance(way, Prototype):
            for server in primaries:
                for source in way.scripts.values():
                    server.command("SCRIPT", "LOAD", source)
    flows: dict[str, Callable[[Way, list[str], str, list[str]], Awaitable[None]]] = {
        "batched": batched,
        "single": single,
    }
    samples: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    serial = itertools.count()
    try:
        for _ in range(runs):
            for way_name, way in ways.items():
                for flow_name, flow in flows.items():
                    count = requests if flow_name == "batched" else requests // 2
                    its_workers = workers if "-node" in way_name else ["w"]
                    for worker in its_workers:
                        await way.backend.join(worker, NodeKind.WORKER, None, 600)
                    await way.backend.join(client, NodeKind.CLIENT, None, 600)
                    keys = request_keys(next(serial) * requests, count)
                    for server in primaries:
                        server.command("CONFIG", "RESETSTAT")
                    cpu_before = [cpu_usec(server) for server in primaries]
                    await flow(way, keys, client, its_workers)
                    cpu = [
                        cpu_usec(s) - before
                        for s, before in zip(primaries, cpu_before, strict=True)
                    ]
                    found = samples.setdefault((way_name, flow_name), {"cpu": [], "script": []})
                    found["cpu"].append([usec / count for usec in cpu])
                    found["script"].append([script_usec(s) / count for s in primaries])
                    for server in primaries:
                        server.command("FLUSHALL")
        for (way_name, flow_name), found in samples.items():
            count = requests if flow_name == "batched" else requests // 2
            emit(layout, way_name, flow_name, count, found)
    finally:
        for way in ways.values():
            await way.backend.close()
            if isinstance(way, Prototype):
                way.close()


def emit(
    layout: str, way: str, flow: str, count: int, samples: dict[str, list[list[float]]]
) -> None:
    """One JSON line: per measure (`cpu`, `script`) the median per request in all, on the
    grid's primary, and on the others (largest first)."""
    line: dict[str, object] = {
        "bench": "records_split",
        "layout": layout,
        "way": way,
        "flow": flow,
        "requests": count,
        "runs": len(samples["cpu"]),
    }
    for measure, runs in samples.items():
        totals = [sum(run) for run in runs]
        primaries = [statistics.median(run[i] for run in runs) for i in range(len(runs[0]))]
        grid, others = primaries[0], sorted(primaries[1:], reverse=True)
        line[f"{measure}_us_per_request"] = round(statistics.median(totals), 1)
        line[f"{measure}_grid_primary"] = round(grid, 1)
        line[f"{measure}_other_primaries"] = [round(value, 1) for value in others]
        line[f"{measure}_samples"] = [round(total, 1) for total in totals]
    print(json.dumps(line), flush=True)
    say(
        f"{layout:8} {way:9} {flow:8} cpu {line['cpu_us_per_request']:6} us/request "
        f"(grid's primary {line['cpu_grid_primary']}, others {line['cpu_other_primaries']}); "
        f"scripts {line['script_us_per_request']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--layouts", default="one,cluster3", help="one (a server), cluster3 (3 primaries), or both"
    )
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    sizes = {"requests": args.requests, "runs": args.runs}
    if "one" in layouts:
        with RedisServer() as server:
            workers = ["w0", "w1", "w2"]
            asyncio.run(
                measure(
                    [server], server.url, "one", "c", workers=workers, owners=one_server, **sizes
                )
            )
    if "cluster3" not in layouts:
        return
    with RedisClusterServers(replicas=0) as cluster:
        keys = RedisKeys(_PREFIX)
        grid = cluster.owner(cluster.keyslot(keys.leases))
        primaries = [grid, *(server for server in cluster.primaries() if server is not grid)]
        # A client whose own inbox is on another primary than the grid's slot, as 2 in 3 of a
        # grid's clients are: the grid's primary then carries the pool's steps alone.
        client = next(
            name
            for name in (f"c{i}" for i in itertools.count())
            if cluster.owner(cluster.keyslot(keys.own_inbox(name))) is not grid
        )
        owners = cluster_owners(grid)
        # The split-node way's workers: one whose own slot is on each primary, as a grid's
        # many workers spread.
        names = (f"w{i}" for i in itertools.count())
        workers = [
            next(name for name in names if owners(keys.own_inbox(name)) == server.port)
            for server in primaries
        ]
        asyncio.run(
            measure(
                primaries, cluster.url, "cluster3", client, workers=workers, owners=owners, **sizes
            )
        )


if __name__ == "__main__":
    main()
