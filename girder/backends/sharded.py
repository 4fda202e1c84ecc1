"""`ShardedRedisBackend`: a grid whose request records spread over a Redis Cluster's slots.

`Settings.layout = "sharded"` (docs/scaling.md, "Sharding design"). Each request key's record
lives in the slot of its own key (`redis_records`), so on a Redis Cluster the records, and the
work on them, spread over every primary by their keys. What stays in the grid's slot is list
work and membership: the work lists, running sets, volunteers, leases, journals and events. The
nodes' notifications are in their own slots (`spread_notifications` is implied).

Every operation on a record is then two or more steps, each one script of one slot, ordered so
that a crash between them leaves state that an existing recovery finishes:

- **submit**: (1) each key's record made or found, the waiter added; (1b) a key running under
  an owner that will not complete it (not registered, and not in its running set) is freed; (2)
  the wait edges' other side, and a cycle walk along them; (3) the grid's step pushes the
  pending keys (and hands them out). A crash before (3) leaves pending records on no list: the
  waiter's resubmission of long-awaited keys pushes them again.
- **claim**: (1) the grid's step pops keys into the node's running set (journaled); (2) each
  key's record is marked running, or refuses (done, or running elsewhere): a refused key leaves
  the running set at the node's next grid step. A crash between: the reaper requeues the set.
- **complete**: (1) each record takes its outcome and answers its waiters and edges; (2) the
  waiters are told in their own slots; the edges' other sides are dropped; (3) the grid's step
  drops the keys from the running set (and claims). A crash after (1): the waiters resubmit
  long-awaited keys and find them done; the reaper finds done keys and leaves them.
- **reap, leave, reconcile**: the grid's state is read, the records made pending again (a
  crash counted once), then one grid step forgets the node and pushes them back. A crash in
  between: the next reap reads the same running set again.

A failover that loses the grid's write of a step but keeps the record's is the one case no
operation's own recovery finishes when nobody alive waits for the key: after one, the
distributors sweep such orphans away (`_Sweep`).

Events: a record's step cannot reach the grid's event list, so the caller makes the events of
what its records' steps did and hands them to its next grid step; those made after an
operation's last grid step go in one more call. It makes them only while this process knows the
events are watched (by its own read of them, or by a heartbeat that found them watched), so a
grid nobody watches pays nothing for them, and a process that starts watching sees the others'
events from their next heartbeat on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from girder.backends.base import (
    Assignment,
    Beat,
    CacheStats,
    CacheUsage,
    Cancelling,
    Claimed,
    Completion,
    NewRequest,
    NodeKind,
    Reaped,
    RequestState,
    Submitted,
)
from girder.backends.redis import RedisBackend, _head, _ms
from girder.backends.redis_blobs import RedisBlobs
from girder.backends.redis_keys import (
    DONE,
    F_FUNCTION,
    F_OUTCOME,
    F_OWNER,
    F_PAYLOAD,
    F_STATUS,
    F_SUBMITTED,
    FUNCTION_ID,
    FUNCTION_NAME,
    PENDING,
    RECORD,
    RUNNING,
    chunk_fields,
    unchunked,
)
from girder.backends.redis_records import (
    RecordOutcome,
    RecordSteps,
    root_field,
    waited_by_field,
    waits_field,
)
from girder.backends.redis_scripts import MAX_CANCEL_STEP, MAX_SCRIPT_KEYS
from girder.backends.resp import Pipelined, ReplyError
from girder.config import Settings
from girder.errors import ConfigurationError
from girder.log import get_logger

CRASHED = "!"
"""Before a key on a work list: the key killed a worker before (see shard_claim.lua)."""
SHARDED = "sharded"
"""The value of the grid's `layout` key (see `redis_keys`) in this layout."""

_log = get_logger()
_SEPARATOR = "\x1f"
_SCAN_COUNT = 1000
_PEEK_SLACK = 64
"""Keys past twice what a hand-out can take whose records it reads first (a key deeper than
what it read is handed out as it is, and refused by the volunteer's claim if nobody can run it)."""
_RUN_ID = re.compile(rb"^run_id:(\w+)", re.MULTILINE)
_STATES = {PENDING: RequestState.PENDING, RUNNING: RequestState.RUNNING, DONE: RequestState.DONE}
_SWEEP_ROUNDS = 3
"""Sweeps for orphaned records after writes may have been lost (see `_Sweep`)."""


@dataclasses.dataclass
class _Sweep:
    """A distributor's sweep for orphaned records. A failover that loses the grid primary's
    writes but keeps the records' (on other primaries) can leave a record pending on no work
    list (its push lost) or running under an owner whose running set lost it (its claim lost).
    In the one-slot layout the same failover loses the record with the push or the claim, and
    a node that still waits for the key submits it again, which makes it anew. Here the record
    would stay, unfinished for ever when nobody waits for it any more: the orphan of a dead
    client, or of a parent run that was given up (its worker, alive, is still named among the
    record's waiters, but no longer waits).

    After any heartbeat of this process saw writes lost, its distributors look for such records
    `_SWEEP_ROUNDS` times, a lease apart, in a task of their own (a round reads every record:
    the node's heartbeats must not wait for it). A record found twice in a row, unchanged (same
    status, same submission or owner, no new waiter), is no transient between two steps of an
    operation: it is deleted, as the one-slot layout's failover would have lost it
    (record_orphan.lua). A node that still waits for it submits it again (it does so with the
    keys it waited long for), and it is made anew."""

    rounds: int = 0
    """Rounds left."""
    due: float = 0.0
    """When (monotonic) the next round is due."""
    interval: float = 0.0
    suspects: dict[str, tuple[bytes, bytes]] = dataclasses.field(default_factory=dict)
    """The orphans the previous round found: key -> (status, submission token or owner)."""

    def arm(self, interval: float) -> None:
        """Writes may have been lost: sweep from a lease from now on."""
        self.rounds, self.interval = _SWEEP_ROUNDS, interval
        self.due = time.monotonic() + interval

    def take_round(self) -> bool:
        """Whether a round is due now (then it counts as taken)."""
        if not self.rounds or time.monotonic() < self.due:
            return False
        self.rounds -= 1
        self.due = time.monotonic() + self.interval
        return True

    def confirmed(self, found: dict[str, tuple[bytes, bytes]]) -> list[str]:
        """The keys of `found` the previous round found in the same state (they go now); the
        rest of `found` becomes the suspects, until the last round."""
        same = {key for key, state in found.items() if self.suspects.get(key) == state}
        kept = {key: state for key, state in found.items() if key not in same}
        self.suspects = kept if self.rounds else {}
        return sorted(same)


def _event(kind: str, node: str, key: str = "", *rest: str) -> str:
    """An event as a grid step takes it: kind, node, key, name, parent, job, detail."""
    fields = [kind, node, key, *rest]
    fields += [""] * (7 - len(fields))
    return _SEPARATOR.join(field.replace(_SEPARATOR, " ").replace("\x1e", " ") for field in fields)


async def _run_id(server: Pipelined) -> bytes:
    """The run id of `server` (b"" when INFO is denied)."""
    [info] = await server.pipeline([("INFO", "server")])
    found = None if isinstance(info, Exception) else _RUN_ID.search(info)
    return found.group(1) if found else b""


def _texts(values: Any) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


class ShardedRedisBackend(RedisBackend):
    """Grid state on Redis, each request's record in the slot of its own key."""

    def __init__(self, url: str, *, settings: Settings | None = None) -> None:
        settings = (settings or Settings()).model_copy(
            update={"spread_notifications": True, "spread_results": False}
        )
        super().__init__(url, settings=settings)
        self._records = RecordSteps(self._keys, self._access)
        self._blobs = RedisBlobs(self._keys, self._access, referring=self._referring)
        self._function_ids: dict[str, str] = {}
        """Function name -> its id in the grid's table (read-mostly: filled on first use)."""
        self._servers_seen: dict[str, frozenset[bytes]] = {}
        """Per node, the run ids of the servers holding records at its previous heartbeat."""
        self._claims: dict[str, set[str]] = {}
        """Per node of this process, the keys it claimed and has not completed or given back:
        `reconcile` and `leave` hand them back too, since a failover of the grid's primary may
        have lost a claim's place in the running set while its record, on another primary,
        kept it running under the node."""
        self._refused: dict[str, list[str]] = {}
        """Per node, keys its claim's records' steps refused that are still in its running set
        (they leave it with the node's next claim step)."""
        self._sweep = _Sweep()
        self._sweeping: asyncio.Task[None] | None = None
        self._distributors: set[str] = set()
        """The distributors of this process (they sweep, see `_Sweep`)."""

    # -- the layout ---------------------------------------------------------------------------

    async def _check_layout(self) -> None:
        """Mark the grid as sharded, unless a one-slot process keeps it: its records are in
        the grid's slot (any record there, or a work list, says so)."""
        keys = self._keys
        if await self._execute("connect", "SET", keys.layout, SHARDED, "NX") is None:
            layout = await self._execute("connect", "GET", keys.layout)
            if layout == SHARDED.encode():
                return
        elif not await self._one_slot_state():
            return
        else:
            await self._execute("connect", "DEL", keys.layout)
            layout = b"one-slot"
        raise ConfigurationError(
            f"the grid {keys.prefix!r} at {self.url} keeps its state in the "
            f"{(layout or b'').decode(errors='replace')!r} layout: set GIRDER_LAYOUT to match "
            "(or flush it)"
        )

    async def _one_slot_state(self) -> bool:
        """Whether the grid's slot holds request records or work lists (a one-slot grid)."""
        for pattern in (self._keys.pattern(RECORD), self._keys.work_pattern()):
            _, found = await self._execute("connect", "SCAN", 0, "MATCH", pattern, "COUNT", 1000)
            if found:
                return True
        return False

    def _saw_results_moved(self, moved: object) -> None:
        """Cached results are already in their own keys' slots here: none move."""

    # -- events -------------------------------------------------------------------------------

    def _add_event(self, events: list[str], kind: str, node: str, key: str, *rest: str) -> None:
        """Add an event to `events`, the caller's for its next grid step, while this process
        knows the events are watched: otherwise the step would drop it (see `_watched`), and
        building it would be work for nothing on every request."""
        if self._watched():
            events.append(_event(kind, node, key, *rest))

    def _watched(self) -> bool:
        return self._events and time.monotonic() < self._watched_until

    async def _publish(self, node: str, events: list[str]) -> None:
        """The events left after node's operation's last grid step, while they are watched."""
        if events and self._watched():
            await self._journaled("shard_events", node, True, node, *events)

    # -- requests -----------------------------------------------------------------------------

    async def submit_and_claim(
        self,
        node: str,
        requests: Sequence[NewRequest],
        *,
        into: str,
        on_top: bool,
        waiter_key: str | None = None,
        dispatch: bool = False,
        claim: int = 0,
        job: str | None = None,
    ) -> tuple[list[Submitted], list[Claimed]]:
        waiter, job = waiter_key or "", job or ""
        answers = await self._records.submit(
            node, [(request.key, request.payload) for request in requests], job=job, waiter=waiter
        )
        freed = await self._free_unowned(
            [
                (request.key, answer.owner)
                for request, answer in zip(requests, answers, strict=True)
                if answer.status == "running" and answer.owner
            ]
        )
        found: list[Submitted] = []
        pushed: list[str] = []
        events: list[str] = []
        for request, answer in zip(requests, answers, strict=True):
            key = request.key
            name = request.name if self._events else ""
            if answer.status == "done":
                found.append(Submitted(key, outcome=answer.outcome))
                self._add_event(events, "submitted", node, key, name, waiter, job, "cached")
                continue
            new = (answer.status == "pending" and not answer.shared) or key in freed
            if answer.status == "pending" or key in freed:
                pushed.append(key)
            found.append(Submitted(key, partial=answer.partial, shared=not new))
            self._add_event(
                events, "submitted", node, key, name, waiter, job, "new" if new else "shared"
            )
        if waiter:
            await self._add_wait_edges(waiter, found)
        if pushed or dispatch:
            for start in range(0, max(len(pushed), 1), MAX_SCRIPT_KEYS):
                batch = pushed[start : start + MAX_SCRIPT_KEYS]
                args: list[str | int] = [node, into, int(on_top), int(dispatch), len(batch)]
                args += [*batch, *events]
                await self._journaled("shard_push", node, True, *args)
                events = []
        if not claim:
            await self._publish(node, events)
            return found, []
        claimed, _ = await self._claim(node, claim, [], "", events)
        return found, claimed

    async def _free_unowned(self, running: list[tuple[str, str]]) -> set[str]:
        """Of (key, owner) pairs of keys found running, those whose owner will not complete
        them (not registered, and the key not in its running set), made pending again."""
        if not running:
            return set()
        owned = await self._owned(running)
        freed: set[str] = set()
        for (key, owner), will in zip(running, owned, strict=True):
            if not will and await self._records.requeue(owner, [key]) == ["pending"]:
                freed.add(key)
        return freed

    async def _owned(self, running: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether each (key, owner) has an owner that will complete it: the key is in the
        owner's running set. (A claim puts it there before its record's step marks the record,
        and every step that takes it out first makes the record done or pending.) Unlike the
        one-slot layout, a registered owner is not enough: a failover that lost the grid's
        write but kept the record's leaves a record running under a live node that does not
        run it, which would never be freed."""
        commands = [("SISMEMBER", self._keys.running(owner), key) for key, owner in running]
        replies = await self._retrying("owned", lambda: self._redis.pipeline(commands))
        return [reply == 1 for reply in replies]

    async def _add_wait_edges(self, waiter: str, found: list[Submitted]) -> None:
        """The wait edges' side in the waiter's record, then a cycle walk from each key: a
        key that reaches the waiter closed a cycle (reported in its place). Two submitters that
        close one cycle at once each add their edge before they walk, so one sees it at least."""
        waited = [answer.key for answer in found if answer.outcome is None]
        if not waited:
            return
        await self._records.add_edges(waiter, [waits_field(key) for key in waited])
        paths = await asyncio.gather(*(self._path(key, waiter) for key in waited))
        cycles = {key: path for key, path in zip(waited, paths, strict=True) if path}
        for index, answer in enumerate(found):
            if answer.key in cycles:
                found[index] = Submitted(answer.key, cycle=(waiter, *cycles[answer.key]))

    async def _path(self, start: str, target: str) -> list[str] | None:
        """A path start -> ... -> target along wait edges (breadth first), or None."""
        if start == target:
            return [start]
        parent = {start: start}
        frontier = [start]
        while frontier:
            after_each = await asyncio.gather(*(self._records.waits(key) for key in frontier))
            following = []
            for key, afters in zip(frontier, after_each, strict=True):
                for after in afters:
                    if after in parent:
                        continue
                    parent[after] = key
                    if after == target:
                        path = [after]
                        while path[-1] != start:
                            path.append(parent[path[-1]])
                        return path[::-1]
                    following.append(after)
            frontier = following
        return None

    async def claim(self, node: str) -> Claimed | None:
        claimed, _ = await self._claim(node, 1, [], "", [])
        return claimed[0] if claimed else None

    async def wait_and_claim(self, node: str, timeout: float) -> Claimed | None:
        await self.wait_for_work(node, timeout)
        return await self.claim(node)

    async def _claim(
        self,
        node: str,
        count: int,
        done: list[str],
        volunteer_at: str,
        events: list[str],
        *,
        told: Sequence[str] = (),
    ) -> tuple[list[Claimed], set[str]]:
        """The grid's step (drop `done` from node's running set, pop up to `count` keys into
        it, publish `events`, say which of the nodes `told` departed), then the popped keys'
        records' steps; again while every key popped was refused (so that a key that crashed a
        worker comes alone, it is never popped after others were claimed). The claimed
        requests, and the departed nodes."""
        claimed: list[Claimed] = []
        departed: set[str] = set()
        drop = [*done, *self._refused.pop(node, [])]
        while True:
            args: list[str | int] = [node, count - len(claimed), volunteer_at, len(drop), len(told)]
            args += [*drop, *told, *events]
            popped_raw, departed_raw = await self._journaled("shard_claim", node, True, *args)
            departed.update(_texts(departed_raw))
            popped = _texts(popped_raw)
            drop, events, told = [], [], ()
            if not popped:
                break
            for key, step in zip(popped, await self._records.claim(node, popped), strict=True):
                if step.status == "claimed":
                    claimed.append(Claimed(key, step.payload))
                    self._claims.setdefault(node, set()).add(key)
                    self._add_event(events, "claimed", node, key)
                else:
                    drop.append(key)
            if claimed:
                break
        if drop:
            self._refused[node] = drop
        await self._publish(node, events)
        return claimed, departed

    async def _departed(self, nodes: Sequence[str]) -> set[str]:
        """Those of `nodes` that left or were reaped: they are told nothing."""
        unique = sorted(set(nodes))
        if not unique:
            return set()
        commands = [("ZSCORE", self._keys.departed, node) for node in unique]
        replies = await self._retrying("departed", lambda: self._redis.pipeline(commands))
        return {
            node for node, score in zip(unique, replies, strict=True) if isinstance(score, bytes)
        }

    async def _tell(
        self, notes: list[tuple[str, bytes]], tails: dict[bytes, bytes], departed: set[str]
    ) -> None:
        """Post each (node, head) of `notes` to the node's own inbox, but to `departed` nodes."""
        posts = [
            part for node, head in notes if node not in departed for part in (node.encode(), head)
        ]
        if posts:
            await self._inboxes.post(posts, tails)

    async def complete(
        self,
        node: str,
        key: str,
        outcome: bytes,
        *,
        cache: bool,
        ttl: float | None = None,
        function: str = "",
        error: str = "",
    ) -> None:
        completion = Completion(key, outcome, cache, ttl, function, error)
        await self.complete_and_claim(node, [completion], claim=0)

    async def complete_and_claim(
        self,
        node: str,
        completions: Sequence[Completion],
        *,
        claim: int,
        volunteer_at: str | None = None,
    ) -> list[Claimed]:
        ids = await self._ids([done.function for done in completions if done.cache])
        outcomes = [
            RecordOutcome(
                done.key,
                done.outcome,
                done.cache,
                0 if done.ttl is None else _ms(done.ttl),
                ids.get(done.function, "") if done.cache else "",
            )
            for done in completions
        ]
        steps = await self._records.complete(node, outcomes)
        self._claims.get(node, set()).difference_update(done.key for done in completions)
        notes: list[tuple[str, bytes]] = []
        tails: dict[bytes, bytes] = {}
        events: list[str] = []
        drops = []
        for done, step in zip(completions, steps, strict=True):
            drops += [(other, waited_by_field(done.key)) for other in step.waits]
            drops += [(other, waits_field(done.key)) for other in step.waited_by]
            if step.status != "done":
                continue
            if done.error:
                self._add_event(events, "failed", node, done.key, "", "", "", done.error)
            else:
                self._add_event(
                    events, "finished", node, done.key, "", "", "", "cached" * done.cache
                )
            tails[_head(done.key)] = done.outcome
            notes += [(waiter, _head(done.key)) for waiter in step.waiters]
        await asyncio.gather(*(self._records.drop_edges(other, [field]) for other, field in drops))
        done_keys = [done.key for done in completions]
        waiters = sorted({waiter for waiter, _ in notes})
        claimed, departed = await self._claim(
            node, claim, done_keys, volunteer_at or "", events, told=waiters
        )
        await self._tell(notes, tails, departed)
        return claimed

    async def _ids(self, functions: list[str]) -> dict[str, str]:
        """The ids of `functions` in the grid's function table (made on first use)."""
        unknown = sorted(set(functions) - self._function_ids.keys())
        if unknown:
            ids = _texts(await self._run("shard_functions", *unknown))
            self._function_ids.update(zip(unknown, ids, strict=True))
        return {name: self._function_ids[name] for name in functions}

    async def publish(self, node: str, key: str, outcome: bytes) -> bool:
        published = await self._records.publish(node, key, outcome)
        if published.stored and published.waiters:
            head = b"~" + _head(key)
            departed = await self._departed(published.waiters)
            await self._tell(
                [(waiter, head) for waiter in published.waiters], {head: outcome}, departed
            )
        return published.stored

    async def state(self, key: str) -> RequestState:
        [[status]] = await self._records.read([key], F_STATUS)
        if status is None:
            return RequestState.UNKNOWN
        return _STATES.get(status.decode(errors="replace"), RequestState.PENDING)

    async def result(self, key: str) -> bytes | None:
        [[status, *outcome]] = await self._records.read([key], F_STATUS, *chunk_fields(F_OUTCOME))
        return unchunked(outcome) if status == DONE.encode() else None

    async def payloads(self, keys: Sequence[str]) -> list[bytes | None]:
        return [unchunked(row) for row in await self._records.read(keys, *chunk_fields(F_PAYLOAD))]

    # -- cancellation -------------------------------------------------------------------------

    async def cancel(
        self,
        node: str,
        job: str,
        *,
        roots: Sequence[str] = (),
        below: str | None = None,
    ) -> Cancelling:
        """The job's cursor (`cancelling:<job>`, in the grid's slot) holds entries
        "<field to drop>\\x1f<key>": each step reads up to MAX_CANCEL_STEP of them, runs their
        records' steps, appends the keys they waited for, and only then trims what it read (a
        step cut short is read again: every record's step is safe to repeat)."""
        cursor = self._keys.cancelling(job)
        first: list[str] = []
        if below:
            waits = await self._records.waits(below)
            await self._records.drop_edges(below, [waits_field(key) for key in waits])
            first = [waited_by_field(below) + _SEPARATOR + key for key in waits]
        else:
            first = [root_field(job) + _SEPARATOR + key for key in roots]
        if first:
            await self._journaled("shard_cursor", node, True, node, job, 0, *first)
        entries = _texts(await self._execute("cancel", "LRANGE", cursor, 0, MAX_CANCEL_STEP - 1))
        cancelled: list[str] = []
        following: list[str] = []
        events: list[str] = []
        notes: list[tuple[str, bytes]] = []
        for entry in entries:
            drop, _, key = entry.partition(_SEPARATOR)
            step = await self._records.cancel(job, key, drop)
            if step.status == "running" and step.owner:
                [owned] = await self._owned([(key, step.owner)])
                if not owned and await self._records.requeue(step.owner, [key]) == ["pending"]:
                    step = await self._records.cancel(job, key)
            if step.status == "kept":
                continue
            notice = b"!" + _head(key) + job.encode()
            if step.status == "running" and step.owner:
                notes.append((step.owner, notice))
            else:
                notes += [(waiter, notice) for waiter in step.waiters]
                self._add_event(events, "cancelled", node, key, "", "", job)
            cancelled.append(key)
            following += [waited_by_field(key) + _SEPARATOR + after for after in step.waits]
        await self._tell(notes, {}, await self._departed([waiter for waiter, _ in notes]))
        remaining = await self._journaled(
            "shard_cursor", node, True, node, job, len(entries), *following
        )
        await self._publish(node, events)
        return Cancelling(tuple(cancelled), int(remaining))

    # -- distribution -------------------------------------------------------------------------

    async def hand_out(self, distributor: str, *, even_share: bool = False) -> list[Assignment]:
        """The records of the list's top are read first (the most a hand-out can take): those
        nobody can claim are dropped when they come up."""
        queue, work = self._keys.volunteers(distributor), self._keys.work(distributor)
        waiting, length = await self._retrying(
            "hand_out", lambda: self._redis.pipeline([("LLEN", queue), ("LLEN", work)])
        )
        unclaimable: list[str] = []
        if isinstance(waiting, int) and isinstance(length, int) and waiting and length:
            share = min(MAX_SCRIPT_KEYS, -(-length // waiting)) if even_share else 1
            top = min(length, waiting * share * 2 + _PEEK_SLACK)
            entries = _texts(await self._execute("hand_out", "LRANGE", work, -top, -1))
            keys = [entry.removeprefix(CRASHED) for entry in entries]
            unclaimable = await self._unclaimable(keys)
        flat = await self._journaled(
            "shard_hand_out", distributor, True, distributor, int(even_share), *unclaimable
        )
        return [Assignment(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def _unclaimable(self, keys: list[str]) -> list[str]:
        """Of `keys`, those a claim would refuse: done, no record, or running under an owner
        that will complete them."""
        rows = await self._records.read(keys, F_STATUS, F_OWNER)
        unclaimable: list[str] = []
        running: list[tuple[str, str]] = []
        for key, (status, owner) in zip(keys, rows, strict=True):
            if status is None or status == DONE.encode():
                unclaimable.append(key)
            elif status == RUNNING.encode() and owner is not None:
                running.append((key, owner.decode(errors="replace")))
        owned = await self._owned(running) if running else []
        unclaimable += [key for (key, _), will in zip(running, owned, strict=True) if will]
        return unclaimable

    # -- membership and recovery --------------------------------------------------------------

    async def join(self, node: str, kind: NodeKind, distributor: str | None, ttl: float) -> None:
        await super().join(node, kind, distributor, ttl)
        if kind == NodeKind.DISTRIBUTOR:
            self._distributors.add(node)

    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
        await super().close()

    async def heartbeat(
        self, node: str, ttl: float, counters: Mapping[str, int] | None = None
    ) -> Beat:
        """As the one-slot layout's, and `lost_writes` also when a server that holds records
        is not one this node saw at its previous heartbeat: a replica promoted in a failover
        (or a server restarted) may have lost the writes of records made since, say a waiter
        added to a record, and the node submits again what it waits for."""
        beat = await super().heartbeat(node, ttl, counters)
        servers = await self._server_ids()
        seen = self._servers_seen.get(node)
        self._servers_seen[node] = servers
        if seen is not None and not servers <= seen:
            beat = dataclasses.replace(beat, lost_writes=True)
        if beat.lost_writes:
            self._sweep.arm(ttl)
        return beat

    async def _server_ids(self) -> frozenset[bytes]:
        """The run ids of the servers that hold the grid's records (every primary)."""
        ids = await asyncio.gather(
            *(
                self._retrying("heartbeat", partial(_run_id, server))
                for server in await self._servers()
            )
        )
        return frozenset(run_id for run_id in ids if run_id)

    async def reconcile(self, node: str, keep: Sequence[str]) -> int:
        """The keys of node's running set and of its claims here (see `_claims`) that it
        does not run go back."""
        kept = set(keep)
        running = _texts(await self._execute("reconcile", "SMEMBERS", self._keys.running(node)))
        claims = self._claims.setdefault(node, set())
        drop = sorted({*running, *claims} - kept)
        claims.intersection_update(kept)
        steps = await self._records.requeue(node, drop)
        pending = [key for key, step in zip(drop, steps, strict=True) if step == "pending"]
        args: list[str | int] = [node, len(drop), *drop, *pending]
        count: int = await self._journaled("shard_reconcile", node, True, *args)
        await self._blobs.reindex()
        return count

    async def leave(self, node: str) -> int:
        self._distributors.discard(node)
        running = sorted(
            {
                *_texts(await self._execute("leave", "SMEMBERS", self._keys.running(node))),
                *self._claims.pop(node, set()),
            }
        )
        steps = await self._records.requeue(node, running)
        pending = [key for key, step in zip(running, steps, strict=True) if step == "pending"]
        count: int = await self._run("shard_leave", node, *pending)
        await self._inboxes.drop([node])
        return count

    async def reap(self, reaper: str, max_crashes: int) -> Reaped:
        """As the one-slot layout's; a distributor also starts a round of the sweep for
        orphaned records when one is due (`_Sweep`)."""
        idle = self._sweeping is None or self._sweeping.done()
        if reaper in self._distributors and idle and self._sweep.take_round():
            self._sweeping = asyncio.create_task(self._sweep_orphans(reaper))
        found = await self._run("shard_dead", reaper)
        if not found:
            return Reaped()
        args: list[str | int] = [reaper]
        owners: dict[str, str] = {}
        for node, keys in zip(_texts(found[::2]), found[1::2], strict=True):
            running = _texts(keys)
            steps = await self._records.requeue(node, running, max_crashes=max_crashes)
            # Pushed marked: a claim takes each alone (see shard_claim.lua).
            pending = [
                CRASHED + key for key, step in zip(running, steps, strict=True) if step == "pending"
            ]
            crashed = [key for key, step in zip(running, steps, strict=True) if step == "crashed"]
            owners.update((key, node) for key in crashed)
            args += [node, len(pending), *pending, len(crashed), *crashed]
        dead, requeued, crashed_out, own_inboxes = await self._journaled(
            "shard_reap", reaper, True, *args
        )
        crashed_keys = _texts(crashed_out)
        await asyncio.gather(
            *(self._records.hand_over(owners[key], reaper, [key]) for key in crashed_keys)
        )
        await self._inboxes.drop(_texts(own_inboxes))
        return Reaped(tuple(_texts(dead)), requeued, tuple(crashed_keys))

    async def _sweep_orphans(self, reaper: str) -> None:
        """A round of the sweep: the orphans found twice go."""
        try:
            found = await self._orphans()
            keys = self._sweep.confirmed(found)
            waiting = await self._records.waiting_nodes(keys)
            orphans = [
                (key, found[key][0].decode(), found[key][1], nodes)
                for key, nodes in zip(keys, waiting, strict=True)
            ]
            dropped = await self._records.drop_orphans(orphans) if orphans else 0
        except Exception as exc:  # the next round, or the next failover's, looks again
            _log.warning("the sweep for orphaned records failed", node=reaper, error=str(exc))
            return
        if dropped:
            _log.warning("deleted orphaned records", node=reaper, count=dropped)

    async def _orphans(self) -> dict[str, tuple[bytes, bytes]]:
        """Records pending on no work list and in no running set (key -> (status, submission
        token)), and records running under an owner whose running set lacks them (key ->
        (status, owner))."""
        keys = await self._own_records("sweep")
        rows = await self._records.read(keys, F_STATUS, F_SUBMITTED, F_OWNER)
        held = await self._held()
        found: dict[str, tuple[bytes, bytes]] = {}
        running: list[tuple[str, bytes]] = []
        for key, (status, token, owner) in zip(keys, rows, strict=True):
            if status == PENDING.encode() and key not in held:
                found[key] = (status, token or b"")
            elif status == RUNNING.encode() and owner is not None:
                running.append((key, owner))
        owned = await self._owned([(key, owner.decode(errors="replace")) for key, owner in running])
        for (key, owner), will in zip(running, owned, strict=True):
            if not will:
                found[key] = (RUNNING.encode(), owner)
        return found

    async def _held(self) -> set[str]:
        """Every key on a work list or in a running set of a node that holds a lease (a
        claimed key is in its node's running set before its record says running; a node's
        lists go to others when it leaves or is reaped). One round trip to the grid's primary;
        garbage of the wrong type where a list or a set goes holds nothing, any other error
        reply fails the round (it is not read in part)."""
        nodes = _texts(await self._execute("sweep", "ZRANGE", self._keys.leases, 0, -1))
        commands: list[tuple[str | int, ...]] = []
        for node in nodes:
            commands += [
                ("LRANGE", self._keys.work(node), 0, -1),
                ("SMEMBERS", self._keys.running(node)),
            ]

        async def attempt() -> list[Any]:
            replies = await self._redis.pipeline(commands)
            for reply in replies:
                if isinstance(reply, ReplyError) and not str(reply).startswith("WRONGTYPE"):
                    raise reply
            return replies

        replies = await self._retrying("sweep", attempt)
        return {
            entry.removeprefix(CRASHED)
            for reply in replies
            if isinstance(reply, list)
            for entry in _texts(reply)
        }

    # -- blobs --------------------------------------------------------------------------------

    async def _referring(self, digests: Sequence[str]) -> list[str]:
        """Of the holders of `digests`, those whose records still refer to them (see
        `RedisBlobs`): the holder sets are read in the grid's slot, then the records."""
        commands: list[tuple[str | bytes | int, ...]] = []
        for digest in digests:
            commands += [
                ("SMEMBERS", self._keys.blob_holders(digest)),
                ("SMEMBERS", self._keys.blob_until_done(digest)),
            ]
        replies = await self._retrying("sweep_blobs", lambda: self._redis.pipeline(commands))
        sets = [set() if isinstance(reply, Exception) else set(_texts(reply)) for reply in replies]
        holders, until_done = set().union(*sets[::2]), set().union(*sets[1::2])
        keys = sorted(holders | until_done)
        statuses = [row[0] for row in await self._records.read(keys, F_STATUS)]
        referring: list[str] = []
        for key, status in zip(keys, statuses, strict=True):
            if status is not None and key in holders:
                referring.append("h" + key)
            if status is not None and status != DONE.encode() and key in until_done:
                referring.append("u" + key)
        return referring

    # -- the cache ----------------------------------------------------------------------------

    async def _own_records(self, what: str) -> list[str]:
        """The keys of every record in its own slot, on every server."""
        names = await self._scan_all(what, self._keys.own_record_pattern())
        return sorted({key for key in map(self._keys.own_record_key, names) if key is not None})

    async def _scan_all(self, what: str, pattern: str) -> list[str]:
        """The names that match `pattern` on every server (each once)."""
        found: set[str] = set()
        for server in await self._servers():
            cursor: bytes = b"0"
            while True:
                scan = ("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
                cursor, names = await self._retrying(what, partial(server.execute, *scan))
                found.update(_texts(names))
                if cursor == b"0":
                    break
        return sorted(found)

    async def cache_size(self) -> int:
        return (await self.cache_stats()).entries

    async def cache_stats(self) -> CacheStats:
        keys = await self._own_records("cache_stats")
        rows = await self._records.read(keys, F_STATUS, F_FUNCTION, *chunk_fields(F_OUTCOME))
        usage: dict[str, list[int]] = {}
        names: dict[bytes, str] = {}
        for status, function, *outcome in rows:
            value = unchunked(outcome)
            if status != DONE.encode() or value is None:
                continue
            fn = function or b""
            if fn not in names:
                name = await self._execute(
                    "cache_stats", "HGET", self._keys.functions, FUNCTION_ID.encode() + fn
                )
                names[fn] = name.decode(errors="replace") if isinstance(name, bytes) else ""
            entry = usage.setdefault(names[fn], [0, 0])
            entry[0] += 1
            entry[1] += len(value)
        functions = {name: CacheUsage(*counts) for name, counts in sorted(usage.items())}
        return CacheStats(
            sum(entry.entries for entry in functions.values()),
            sum(entry.bytes for entry in functions.values()),
            functions,
        )

    async def cache_clear(self, function: str | None = None) -> int:
        fn = ""
        if function is not None:
            found = await self._execute(
                "cache_clear", "HGET", self._keys.functions, FUNCTION_NAME + function
            )
            if found is None:
                return 0
            fn = found.decode()
        keys = await self._own_records("cache_clear")
        return sum(await self._records.drop(keys, fn))

    async def forget(self, keys: Sequence[str]) -> int:
        return sum(await self._records.drop(sorted(set(keys))))

    async def flush(self) -> None:
        names = [self._keys.own_record(key) for key in await self._own_records("flush")]
        names += await self._scan_all("flush", self._keys.own_step_pattern())
        await asyncio.gather(
            *(
                self._retrying("flush", partial(self._at(name).execute, "UNLINK", name))
                for name in names
            )
        )
        await super().flush()
        self._function_ids.clear()
        self._refused.clear()
        self._claims.clear()
