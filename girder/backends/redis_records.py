"""`RecordSteps`: the records' steps, each request key's record in the slot of its own key.

The sharded layout of docs/scaling.md ("The records' step, script by script") takes the
records out of the grid's slot, so that on a Redis Cluster they spread over the primaries by
their keys. Every operation on a record then becomes a step in the key's own slot (here: one
script over that record alone, `record_<name>.lua`) and a step in the slot of a list (a work
list, a running set, an inbox), ordered so that a crash between the two leaves state that an
existing recovery finishes. The steps here decide nothing about other keys or nodes: they
answer what they found (say, "runs under O"), and the caller asks the grid the rest.

Every step is safe to send again: a submission adds the same fields, a claim of a key already
running under the claimer claims it again, a completion of a done key changes nothing, a
requeue counts a crash only when it moves the record. So a step whose reply was lost is sent
again, as the grid's other slot scripts are (`RedisAccess.slot_script`). The steps whose reply
depends on what they changed (a submission that made the record, a completion, a cancellation,
a drop) keep it a while under the call's token in the record's slot, and a resend reads it back
instead of answering what the first run left.

The steps of many keys run concurrently; on one connection their scripts go out back to back,
so a batch costs about one round trip per server.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from girder.backends.redis_access import RedisAccess
from girder.backends.redis_keys import (
    F_OWN_WAITER,
    F_ROOT,
    F_WAITED_BY,
    F_WAITER,
    F_WAITS,
    RedisKeys,
)
from girder.backends.redis_scripts import (
    STEP_CLAIMED,
    STEP_CRASHED,
    STEP_DONE,
    STEP_GONE,
    STEP_PENDING,
    STEP_RUNNING,
)

_MEMBER_PREFIXES = ("w:", "i:", "r:", "a:", "b:")
"""The two-byte prefixes of a record's member fields (see `redis_keys`)."""

_JOURNALED = frozenset({"record_complete", "record_cancel", "record_drop"})
"""The steps that keep their reply under the call's token (KEYS[3], see record_common.lua)."""

MAX_EDGE_FIELDS = 1000
"""The most fields one `record_edges` call sets or deletes."""


def waited_by_field(waiter: str) -> str:
    """The field of a key's record saying that `waiter` waits for the key: the bare key when it
    has 64 characters and no member prefix (as request keys do), else `F_WAITED_BY <waiter>`
    (the same rule as common.lua's `waited_by_field`)."""
    if len(waiter) == 64 and waiter[:2] not in _MEMBER_PREFIXES:
        return waiter
    return F_WAITED_BY + waiter


def waits_field(key: str) -> str:
    """The field of a waiting key's record saying that it waits for `key`."""
    return F_WAITS + key


def root_field(job: str) -> str:
    """The field of a key's record saying that `job` submitted it at the top level."""
    return F_ROOT + job


@dataclass(frozen=True, slots=True)
class Submitted:
    """What a submission's step found of one key (see record_submit.lua)."""

    status: Literal["done", "pending", "running"]
    outcome: bytes | None = None
    """When done: the cached outcome."""
    shared: bool = False
    """When pending: it was pending before (another submission's run will answer it)."""
    owner: str | None = None
    """When running: the node it runs under (whether that node will complete it is the
    caller's question)."""
    partial: bytes | None = None
    """When pending or running: its latest partial answer, if it streams one."""


@dataclass(frozen=True, slots=True)
class ClaimStep:
    """What a claim's step found of one key (see record_claim.lua)."""

    status: Literal["claimed", "running", "gone"]
    payload: bytes = b""
    crashed: bool = False
    """When claimed: the key killed a worker before."""
    owner: str | None = None
    """When running: the node it runs under."""


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """A completion of one key, as its record's step takes it."""

    key: str
    outcome: bytes
    cached: bool = True
    ttl_ms: int = 0
    """The cached record's expiry (0: none)."""
    function_id: str = ""
    """The function's short id in the grid's function table (kept with a cached outcome)."""


@dataclass(frozen=True, slots=True)
class Completed:
    """What a completion's step did to one key (see record_complete.lua)."""

    status: Literal["done", "gone", "running"]
    """done: this step completed it; gone: it had no record; running: done already, or runs
    under another owner (nothing changed)."""
    waiters: list[str] = field(default_factory=list)
    """The nodes to tell (but the completing one)."""
    waits: list[str] = field(default_factory=list)
    """The keys it waited for: the other side of each edge is the caller's to drop."""
    waited_by: list[str] = field(default_factory=list)
    """The keys that waited for it: likewise."""


@dataclass(frozen=True, slots=True)
class Published:
    """What a partial answer's step did (see record_publish.lua)."""

    stored: bool
    waiters: list[str]
    again: bool
    """It was the latest partial already (a step sent again)."""


@dataclass(frozen=True, slots=True)
class CancelStep:
    """What one key's step of a cancellation found (see record_cancel.lua)."""

    status: Literal["kept", "pending", "running"]
    """kept: done, gone or still needed; pending: deleted, its waiters to be told; running:
    its owner to be told."""
    waiters: list[str] = field(default_factory=list)
    owner: str | None = None
    waits: list[str] = field(default_factory=list)
    """The keys it waited for, next on the cancellation's frontier."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(values: Any) -> list[str]:
    return [_text(value) for value in values or []]


def _optional(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) else None


class RecordSteps:
    """The records' steps of a grid, each run in its key's own slot."""

    def __init__(self, keys: RedisKeys, access: RedisAccess) -> None:
        self._keys = keys
        self._access = access

    def _names(self, key: str, journal: bool) -> list[str]:
        """The keys of a step of `key`'s record: the record, its slot's migration probe, and
        for a journaled step the journal entry of a new call token."""
        keys = self._keys
        names = [keys.own_record(key), keys.own_record_migrating(key)]
        return [*names, keys.own_step(key, _token())] if journal else names

    async def _steps(
        self, name: str, calls: Sequence[tuple[str, Sequence[str | bytes | int]]]
    ) -> list[Any]:
        """Step `name` once per (key, args) of `calls`: one pipeline per server."""
        journal = name in _JOURNALED
        batch = [(self._names(key, journal), args) for key, args in calls]
        return list(await self._access.slot_scripts(name, batch))

    async def _step(self, name: str, key: str, *args: str | bytes | int) -> Any:
        [reply] = await self._steps(name, [(key, args)])
        return reply

    async def submit(
        self, node: str, requests: Sequence[tuple[str, bytes]], *, job: str = "", waiter: str = ""
    ) -> list[Submitted]:
        """The first step of submitting each (key, payload) of `requests` for `node`: the key's
        record made (pending, with the payload) or found, node added as its waiter, and
        `waiter` (a waiting request's key) as its waiting key, or without one `job` as its root.
        Then the caller pushes the pending keys onto a work list (a key found pending may be
        pushed again: a claim takes it once)."""
        replies = await self._steps(
            "record_submit",
            [(key, (node, job, waiter, payload, _token())) for key, payload in requests],
        )
        return [_submitted(reply) for reply in replies]

    async def claim(self, node: str, keys: Sequence[str]) -> list[ClaimStep]:
        """The second step of a claim: each of `keys`, which the caller popped into node's
        running set, marked as running under node, unless it is done or runs elsewhere."""
        replies = await self._steps("record_claim", [(key, (node,)) for key in keys])
        return [_claim_step(reply) for reply in replies]

    async def complete(self, node: str, outcomes: Sequence[RecordOutcome]) -> list[Completed]:
        """The first step of completing each of `outcomes`, run by `node`. Then the caller posts
        to the waiters, drops the other side of the edges (`drop_edges`) and drops the keys
        from node's running set."""
        replies = await self._steps(
            "record_complete",
            [
                (
                    done.key,
                    (
                        node,
                        done.outcome,
                        "1" if done.cached else "0",
                        done.ttl_ms,
                        done.function_id,
                    ),
                )
                for done in outcomes
            ],
        )
        return [_completed(reply) for reply in replies]

    async def requeue(
        self, owner: str, keys: Sequence[str], *, max_crashes: int | None = None
    ) -> list[Literal["pending", "crashed", "gone"]]:
        """Each of `keys` that runs under `owner` made pending again, for the caller to push
        back: the records' step of a reap, a reconcile or a leave, or of freeing a key whose
        owner will not complete it. With `max_crashes`, owner died running them: a key's crash
        is counted, and at the limit it stays under owner ("crashed"), for the caller to hand
        over to the reaper (`hand_over`) once the reaper's running set holds it."""
        limit = "" if max_crashes is None else max_crashes
        replies = await self._steps("record_requeue", [(key, (owner, limit)) for key in keys])
        names: dict[int, Literal["pending", "crashed", "gone"]] = {
            STEP_PENDING: "pending",
            STEP_CRASHED: "crashed",
            STEP_GONE: "gone",
        }
        return [names[int(reply)] for reply in replies]

    async def hand_over(self, source: str, target: str, keys: Sequence[str]) -> list[bool]:
        """Each of `keys` that runs under `source` made to run under `target` (true also when it
        does already)."""
        replies = await self._steps("record_hand_over", [(key, (source, target)) for key in keys])
        return [bool(reply) for reply in replies]

    async def drop(self, keys: Sequence[str], function_id: str = "") -> list[bool]:
        """Each of `keys` that is done (and, with `function_id`, cached for that function)
        deleted: whether it was."""
        replies = await self._steps("record_drop", [(key, (function_id,)) for key in keys])
        return [bool(reply) for reply in replies]

    async def waiting_nodes(self, keys: Sequence[str]) -> list[list[str]]:
        """The nodes waiting for each of `keys` (its records' waiter fields; none for a key
        without a record, or a record of the wrong type). One pipeline per server."""
        names = [self._keys.own_record(key) for key in keys]
        replies = await self._access.commands("read", [(name, ("HKEYS", name)) for name in names])
        prefixes = (F_WAITER.encode(), F_OWN_WAITER.encode())
        return [
            []
            if isinstance(reply, Exception)
            else [field[2:].decode(errors="replace") for field in reply if field[:2] in prefixes]
            for reply in replies
        ]

    async def drop_orphans(self, orphans: Sequence[tuple[str, str, bytes, Sequence[str]]]) -> int:
        """Each (key, status, mark, waiting nodes) of `orphans` deleted if its record is still
        so (see record_orphan.lua): how many were."""
        replies = await self._steps(
            "record_orphan",
            [(key, (status, mark, *nodes)) for key, status, mark, nodes in orphans],
        )
        return sum(int(reply) for reply in replies)

    async def read(self, keys: Sequence[str], *fields: str) -> list[list[bytes | None]]:
        """`fields` of each key's record (Nones for a key without one, or a record of the wrong
        type: garbage has nothing to show). One pipeline per server."""
        names = [self._keys.own_record(key) for key in keys]
        replies = await self._access.commands(
            "read", [(name, ("HMGET", name, *fields)) for name in names]
        )
        return [
            [None] * len(fields) if isinstance(reply, Exception) else list(reply)
            for reply in replies
        ]

    async def publish(self, node: str, key: str, outcome: bytes) -> Published:
        """A partial answer of `key`, which node runs, stored as its latest."""
        stored, waiters, again = await self._step("record_publish", key, node, outcome)
        return Published(bool(stored), _texts(waiters), bool(again))

    async def cancel(self, job: str, key: str, drop: str = "") -> CancelStep:
        """One key's step of cancelling `job`, after deleting its field `drop` (`root_field`
        of the job, or `waited_by_field` of a key that no longer waits for it)."""
        reply = await self._step("record_cancel", key, drop, job)
        code = int(reply[0])
        if code == STEP_PENDING:
            return CancelStep("pending", waiters=_texts(reply[1]), waits=_texts(reply[2]))
        if code == STEP_RUNNING:
            return CancelStep("running", owner=_text(reply[1]), waits=_texts(reply[2]))
        return CancelStep("kept")

    async def add_edges(self, key: str, fields: Sequence[str]) -> list[str]:
        """Set member `fields` of key's record (the other side of wait edges); the keys it
        waits for (the next frontier of a cycle walk)."""
        return await self._edges(key, "1", fields)

    async def drop_edges(self, key: str, fields: Sequence[str]) -> list[str]:
        """Delete member `fields` of key's record; the keys it still waits for."""
        return await self._edges(key, "0", fields)

    async def waits(self, key: str) -> list[str]:
        """The keys that `key` waits for (a step of a cycle walk)."""
        return await self._edges(key, "0", ())

    async def _edges(self, key: str, add: str, fields: Sequence[str]) -> list[str]:
        waits: list[str] = []
        for start in range(0, max(len(fields), 1), MAX_EDGE_FIELDS):
            batch = fields[start : start + MAX_EDGE_FIELDS]
            waits = _texts(await self._step("record_edges", key, add, *batch))
        return waits


def _token() -> str:
    """A new call token."""
    return uuid.uuid4().hex[:16]


def _submitted(reply: Any) -> Submitted:
    code = int(reply[0])
    if code == STEP_DONE:
        return Submitted("done", outcome=_optional(reply[1]))
    if code == STEP_RUNNING:
        return Submitted("running", owner=_text(reply[1]), partial=_optional(reply[2]))
    return Submitted("pending", shared=bool(reply[1]), partial=_optional(reply[2]))


def _claim_step(reply: Any) -> ClaimStep:
    code = int(reply[0])
    if code == STEP_CLAIMED:
        return ClaimStep("claimed", payload=_optional(reply[1]) or b"", crashed=bool(reply[2]))
    if code == STEP_RUNNING:
        return ClaimStep("running", owner=_text(reply[1]))
    return ClaimStep("gone")


def _completed(reply: Any) -> Completed:
    code = int(reply[0])
    if code == STEP_DONE:
        return Completed("done", _texts(reply[1]), _texts(reply[2]), _texts(reply[3]))
    if code == STEP_GONE:
        return Completed("gone", [], _texts(reply[2]), _texts(reply[3]))
    return Completed("running")
