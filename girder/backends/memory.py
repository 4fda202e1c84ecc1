"""`MemoryBackend`: the whole grid state in this process's memory (`memory://`).

Every method runs without an `await` between reading and writing, so each one is atomic on the
event loop. Wake-ups use one `asyncio.Event` per node; the backend must be used from one loop.

The result cache is bounded: `Settings.cache_max_entries` and `cache_max_bytes` (an outcome plus
its request payload) drop the least recently used outcomes (a hit makes an outcome the most
recent) to make room, and an expired outcome is dropped when it is next read.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from girder.backends.base import (
    Assignment,
    Beat,
    CacheStats,
    CacheUsage,
    Cancelling,
    Claimed,
    Completion,
    Event,
    EventKind,
    NewRequest,
    NodeInfo,
    NodeKind,
    Notification,
    Reaped,
    RequestState,
    ServerLoad,
    Submitted,
)
from girder.config import Settings


@dataclass(slots=True)
class _Record:
    """A request that is pending or running (done ones live in `_outcomes`)."""

    payload: bytes
    owner: str | None = None
    crashes: int = 0
    waiters: set[str] = field(default_factory=set)
    partial: bytes | None = None
    """The latest partial outcome published for the key (see `publish`)."""


_Published = tuple[int, float, EventKind, str, str, str, str, str, str]
"""An event in the ring buffer: its number, then `Event`'s fields after the id."""


@dataclass(slots=True)
class _Blob:
    """A stored large value, the request keys that hold it (`until_done`: those that hold it
    only until they are done), and when it was last put or checked (see `sweep_blobs`)."""

    data: bytes
    holders: set[str]
    until_done: set[str]
    touched: float


@dataclass(slots=True)
class _Member:
    kind: NodeKind
    distributor: str | None
    expires: float
    counters: dict[str, int] = field(default_factory=dict)


_FOREVER = float("inf")
"""The expiry of an outcome cached without a ttl."""


class _Signal:
    """A sticky wake-up: a `set` before `wait` makes the next `wait` return at once."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        if not self._event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                return
        self._event.clear()


class MemoryBackend:
    """In-process state for `Grid.local` (the embedded default)."""

    def __init__(self, url: str = "memory://", *, settings: Settings | None = None) -> None:
        self.url = url
        self.round_trips = False
        self.shared = False
        settings = settings or Settings()
        self._events: deque[_Published] | None = (
            deque(maxlen=settings.events_max) if settings.events else None
        )
        self._event_numbers = itertools.count(1)
        self._watch_seconds = settings.events_watch
        self._watched_until = -math.inf
        """Until when (monotonic seconds) the last read of `events` keeps them published."""
        self._max_entries = settings.cache_max_entries
        self._max_bytes = settings.cache_max_bytes
        self._reset()

    def _reset(self) -> None:
        self._records: dict[str, _Record] = {}
        # Done keys, least recently used first; they map str -> bytes, str or float, which the
        # collector has nothing to look for in.
        self._outcomes: OrderedDict[str, bytes] = OrderedDict()
        self._meta: dict[str, tuple[str, float]] = {}  # key -> (function, expiry or inf)
        self._cache_bytes = 0
        self._work: dict[str, deque[str]] = {}
        self._pops: dict[str, int] = {}
        self._running: dict[str, set[str]] = {}
        self._volunteers: dict[str, deque[str]] = {}
        self._inbox: dict[str, list[Notification]] = {}
        self._inbox_signal: dict[str, _Signal] = {}
        self._work_signal: dict[str, _Signal] = {}
        self._waits: dict[str, set[str]] = {}  # waiter key -> keys it waits for
        self._waited_by: dict[str, set[str]] = {}  # key -> waiter keys
        self._members: dict[str, _Member] = {}
        self._clock = 0
        self._roots: dict[str, set[str]] = {}  # key -> jobs that submitted it at the top level
        self._departed: set[str] = set()
        self._blobs: dict[str, _Blob] = {}

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- helpers ----------------------------------------------------------------------------------

    def _list(self, node: str) -> deque[str]:
        work = self._work.get(node)
        if work is None:
            work = self._work[node] = deque()
        return work

    def _wake_worker(self, node: str) -> None:
        signal = self._work_signal.get(node)
        if signal is None:
            signal = self._work_signal[node] = _Signal()
        signal.set()

    def _runnable(self, key: str, record: _Record | None) -> bool:
        """Pending, or running under no owner that will complete it: one that claimed it (the
        key is in its running set) or that is registered."""
        if record is None:
            return False
        owner = record.owner
        return owner is None or (
            owner not in self._members and key not in self._running.get(owner, ())
        )

    def _drop_wait_edges(self, key: str) -> None:
        """Delete the wait edges out of and into `key`."""
        for target in self._waits.pop(key, ()):
            waiters = self._waited_by.get(target)
            if waiters is not None:
                waiters.discard(key)
                if not waiters:
                    del self._waited_by[target]
        for waiter in self._waited_by.pop(key, ()):
            targets = self._waits.get(waiter)
            if targets is not None:
                targets.discard(key)

    def _cycle_from(self, start: str, target: str) -> tuple[str, ...] | None:
        """A path start -> ... -> target along wait edges (breadth first), or None."""
        if start == target:
            return (start,)
        parents: dict[str, str] = {start: start}
        frontier = [start]
        while frontier:
            next_frontier: list[str] = []
            for key in frontier:
                for nxt in self._waits.get(key, ()):
                    if nxt in parents:
                        continue
                    parents[nxt] = key
                    if nxt == target:
                        path = [nxt]
                        while path[-1] != start:
                            path.append(parents[path[-1]])
                        return tuple(reversed(path))
                    next_frontier.append(nxt)
            frontier = next_frontier
        return None

    def _move_bottom(self, source: str, target: str, count: int) -> int:
        src = self._work.get(source)
        if not src or count <= 0:
            return 0
        moved = [src.popleft() for _ in range(min(count, len(src)))]
        self._push_bottom(target, moved)
        return len(moved)

    def _event(
        self,
        kind: EventKind,
        node: str,
        key: str = "",
        *,
        name: str = "",
        parent: str = "",
        job: str = "",
        detail: str = "",
    ) -> None:
        """Append an event to the ring buffer (when events are published), as a tuple: the
        `Event` is built only when someone reads it."""
        if self._events is not None and time.monotonic() < self._watched_until:
            number = next(self._event_numbers)
            self._events.append((number, time.time(), kind, node, key, name, parent, job, detail))

    def _publishing(self) -> bool:
        """Whether events are published now: enabled, and read within `events_watch`."""
        return self._events is not None and time.monotonic() < self._watched_until

    def _push_bottom(self, node: str, keys: Sequence[str]) -> None:
        """Push keys on the bottom of `node`'s list so that keys[0] comes up first."""
        if keys:
            self._list(node).extendleft(keys)
            self._wake_worker(node)

    # -- the result cache -------------------------------------------------------------------------

    def _cached(self, key: str) -> bytes | None:
        """The cached outcome of `key` (now the most recently used), or None; drops it if it
        expired."""
        outcome = self._outcomes.get(key)
        if outcome is None:
            return None
        if self._meta[key][1] <= time.monotonic():
            self._uncache(key)
            return None
        self._outcomes.move_to_end(key)
        return outcome

    def _cache(self, key: str, outcome: bytes, ttl: float | None, fn: str) -> None:
        """Cache an outcome (without the request's payload: nothing runs a done key again),
        dropping the least recently used ones to make room (one larger than the whole cache is
        not cached: it would only push every other one out)."""
        if self._max_bytes is not None and len(outcome) > self._max_bytes:
            return
        self._outcomes[key] = outcome
        self._meta[key] = (fn, _FOREVER if ttl is None else time.monotonic() + ttl)
        self._cache_bytes += len(outcome)
        if self._max_bytes is not None and self._cache_bytes > self._max_bytes:
            while self._cache_bytes > self._max_bytes:
                self._uncache(next(iter(self._outcomes)))
        if self._max_entries is not None and len(self._outcomes) > self._max_entries:
            while len(self._outcomes) > self._max_entries:
                self._uncache(next(iter(self._outcomes)))

    def _uncache(self, key: str) -> None:
        self._cache_bytes -= len(self._outcomes.pop(key))
        del self._meta[key]

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for key in [key for key, (_, expires) in self._meta.items() if expires <= now]:
            self._uncache(key)

    async def cache_size(self) -> int:
        self._drop_expired()
        return len(self._outcomes)

    async def cache_stats(self) -> CacheStats:
        self._drop_expired()
        usage: dict[str, CacheUsage] = {}
        for key, outcome in self._outcomes.items():
            name = self._meta[key][0]
            found = usage.get(name, CacheUsage())
            usage[name] = CacheUsage(found.entries + 1, found.bytes + len(outcome))
        return CacheStats(len(self._outcomes), self._cache_bytes, usage)

    async def cache_clear(self, function: str | None = None) -> int:
        doomed = [
            key for key in self._outcomes if function is None or self._meta[key][0] == function
        ]
        for key in doomed:
            self._uncache(key)
        return len(doomed)

    async def forget(self, keys: Sequence[str]) -> int:
        self._drop_expired()
        doomed = {key for key in keys if key in self._outcomes}
        for key in doomed:
            self._uncache(key)
        return len(doomed)

    # -- requests ---------------------------------------------------------------------------------

    async def submit(
        self,
        node: str,
        requests: Sequence[NewRequest],
        *,
        into: str,
        on_top: bool,
        waiter_key: str | None = None,
        dispatch: bool = False,
        job: str | None = None,
    ) -> list[Submitted]:
        return self._submit(
            node,
            requests,
            into=into,
            on_top=on_top,
            waiter_key=waiter_key,
            dispatch=dispatch,
            job=job,
        )

    def _submit(
        self,
        node: str,
        requests: Sequence[NewRequest],
        *,
        into: str,
        on_top: bool,
        waiter_key: str | None,
        dispatch: bool,
        job: str | None,
    ) -> list[Submitted]:
        results: list[Submitted] = []
        pushed: list[str] = []
        for request in requests:
            key = request.key
            done = self._cached(key)
            if done is not None:
                results.append(Submitted(key, outcome=done))
                self._submitted(node, request, waiter_key, job, "cached")
                continue
            record = self._records.get(key)
            shared = record is not None and (
                record.owner is None or not self._runnable(key, record)
            )
            if record is None:
                record = self._records[key] = _Record(request.payload)
            record.waiters.add(node)
            if self._runnable(key, record):
                record.owner = None
                pushed.append(key)
            self._submitted(node, request, waiter_key, job, "shared" if shared else "new")
            cycle = None
            if waiter_key is None and job is not None:
                self._roots.setdefault(key, set()).add(job)
            if waiter_key is not None:
                self._waits.setdefault(waiter_key, set()).add(key)
                self._waited_by.setdefault(key, set()).add(waiter_key)
                if key == waiter_key or key in self._waits:
                    # Only a key with wait edges of its own can lead back to the waiter.
                    found = self._cycle_from(key, waiter_key)
                    if found is not None:
                        cycle = (waiter_key, *found)
            results.append(
                Submitted(key, cycle=cycle, partial=record.partial, shared=shared and not cycle)
            )
        if pushed:
            if on_top:
                self._list(into).extend(pushed)
            else:
                self._list(into).extendleft(pushed)
        if dispatch:
            self._hand_out(into, even_share=True)
        if pushed and (not dispatch or self._work[into]):
            self._wake_worker(into)
        return results

    def _submitted(
        self, node: str, request: NewRequest, waiter_key: str | None, job: str | None, how: str
    ) -> None:
        if self._publishing():
            self._event(
                EventKind.SUBMITTED,
                node,
                request.key,
                name=request.name,
                parent=waiter_key or "",
                job=job or "",
                detail=how,
            )

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
        submitted = self._submit(
            node,
            requests,
            into=into,
            on_top=on_top,
            waiter_key=waiter_key,
            dispatch=dispatch,
            job=job,
        )
        return submitted, self._claim_many(node, claim)

    async def claim(self, node: str) -> Claimed | None:
        return self._claim(node)

    def _claim_many(self, node: str, wanted: int) -> list[Claimed]:
        """Up to `wanted` claims; a key that crashed a worker before is only claimed alone."""
        claimed: list[Claimed] = []
        while len(claimed) < wanted:
            next_claim = self._claim(node, fresh_only=bool(claimed))
            if next_claim is None:
                break
            claimed.append(next_claim)
            if self._records[next_claim.key].crashes:
                break
        return claimed

    def _claim(self, node: str, *, fresh_only: bool = False) -> Claimed | None:
        work = self._work.get(node)
        while work:
            key = work.pop()
            record = self._records.get(key)
            if record is None or not self._runnable(key, record):
                continue
            if fresh_only and record.crashes:
                work.append(key)
                return None
            record.owner = node
            self._running.setdefault(node, set()).add(key)
            self._pops[node] = self._pops.get(node, 0) + 1
            self._event(EventKind.CLAIMED, node, key)
            return Claimed(key, record.payload)
        return None

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
        self._complete(node, Completion(key, outcome, cache, ttl, function, error))

    async def complete_and_claim(
        self,
        node: str,
        completions: Sequence[Completion],
        *,
        claim: int,
        volunteer_at: str | None = None,
    ) -> list[Claimed]:
        for completion in completions:
            self._complete(node, completion)
        claimed = self._claim_many(node, claim)
        if claim > 0 and not claimed and volunteer_at is not None:
            self._volunteer(volunteer_at, node)
        return claimed

    def _complete(self, node: str, completion: Completion) -> None:
        key, outcome = completion.key, completion.outcome
        running = self._running.get(node)
        if running is not None:
            running.discard(key)
        record = self._records.get(key)
        # A key with a record is not in `_outcomes` (`submit` drops an expired outcome before
        # it makes one); without a record, an expired outcome changes nothing either.
        if key in self._outcomes or (record is not None and record.owner not in (None, node)):
            return  # done, or a late completion of a key that now runs elsewhere
        self._drop_wait_edges(key)
        self._roots.pop(key, None)
        if record is None:
            return
        del self._records[key]
        if completion.cache:
            self._cache(key, outcome, completion.ttl, completion.function)
        if completion.error:
            self._event(EventKind.FAILED, node, key, detail=completion.error)
        else:
            self._event(EventKind.FINISHED, node, key, detail="cached" if completion.cache else "")
        waiters = record.waiters
        record.waiters = set()
        for waiter in waiters:
            if waiter != node and waiter not in self._departed:
                self._post(waiter, Notification(key, outcome))

    async def publish(self, node: str, key: str, outcome: bytes) -> bool:
        record = self._records.get(key)
        if record is None or record.owner != node or key in self._outcomes:
            return False
        if record.partial == outcome:
            return True  # a repeat
        record.partial = outcome
        for waiter in record.waiters:
            if waiter != node and waiter not in self._departed:
                self._post(waiter, Notification(key, outcome, partial=True))
        return True

    async def take_notifications(self, node: str, timeout: float) -> list[Notification]:
        if not self._inbox.get(node):
            signal = self._inbox_signal.get(node)
            if signal is None:
                signal = self._inbox_signal[node] = _Signal()
            await signal.wait(timeout)
        return self._inbox.pop(node, [])

    async def wait_for_work(self, node: str, timeout: float) -> None:
        signal = self._work_signal.get(node)
        if signal is None:
            signal = self._work_signal[node] = _Signal()
        await signal.wait(timeout)

    async def wait_and_claim(self, node: str, timeout: float) -> Claimed | None:
        await self.wait_for_work(node, timeout)
        return self._claim(node)

    async def state(self, key: str) -> RequestState:
        if self._cached(key) is not None:
            return RequestState.DONE
        record = self._records.get(key)
        if record is None:
            return RequestState.UNKNOWN
        return RequestState.RUNNING if record.owner is not None else RequestState.PENDING

    async def result(self, key: str) -> bytes | None:
        return self._cached(key)

    async def payloads(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._payload(key) for key in keys]

    def _payload(self, key: str) -> bytes | None:
        record = self._records.get(key)
        return None if record is None else record.payload

    async def cancel(
        self,
        node: str,
        job: str,
        *,
        roots: Sequence[str] = (),
        below: str | None = None,
    ) -> Cancelling:
        if below is None:
            frontier = list(roots)
            for key in frontier:
                self._roots.get(key, set()).discard(job)
        else:
            frontier = list(self._waits.pop(below, ()))
            for key in frontier:
                self._waited_by.get(key, set()).discard(below)
        cancelled: list[str] = []
        while frontier:
            key = frontier.pop()
            record = self._records.get(key)
            if record is None or self._roots.get(key) or self._waited_by.get(key):
                continue
            frontier.extend(self._waits.get(key, ()))
            self._drop_wait_edges(key)
            self._roots.pop(key, None)
            notice = Notification(key, b"", cancelled_by=job)
            if record.owner is not None and not self._runnable(key, record):
                self._post(record.owner, notice)
            else:
                del self._records[key]
                self._event(EventKind.CANCELLED, node, key, job=job)
                for waiter in record.waiters:
                    if waiter not in self._departed:
                        self._post(waiter, notice)
            cancelled.append(key)
        return Cancelling(tuple(cancelled), 0)

    async def ask_to_cancel(self, owner: str, job: str) -> bool:
        if owner not in self._members:
            return False
        self._post(owner, Notification("", b"", cancelled_by=job))
        return True

    def _post(self, node: str, notification: Notification) -> None:
        self._inbox.setdefault(node, []).append(notification)
        signal = self._inbox_signal.get(node)
        if signal is None:
            signal = self._inbox_signal[node] = _Signal()
        signal.set()

    # -- distribution -----------------------------------------------------------------------------

    async def volunteer(self, distributor: str, node: str) -> None:
        self._volunteer(distributor, node)

    def _volunteer(self, distributor: str, node: str) -> None:
        queue = self._volunteers.setdefault(distributor, deque())
        if node not in queue:
            queue.append(node)
            if self._work.get(distributor):
                self._wake_worker(distributor)

    async def hand_out(self, distributor: str, *, even_share: bool = False) -> list[Assignment]:
        return self._hand_out(distributor, even_share=even_share)

    def _hand_out(self, distributor: str, *, even_share: bool) -> list[Assignment]:
        volunteers = self._volunteers.get(distributor)
        work = self._work.get(distributor)
        if not volunteers or not work:
            return []
        share = -(-len(work) // len(volunteers)) if even_share else 1
        handed: list[Assignment] = []
        while volunteers and work:
            if volunteers[0] not in self._members:
                volunteers.popleft()  # gone, or never a node: it gets nothing
                continue
            keys: list[str] = []
            while work and len(keys) < share:
                key = work.pop()
                if self._runnable(key, self._records.get(key)):
                    keys.append(key)
            if not keys:
                break
            volunteer = volunteers.popleft()
            self._list(volunteer).extend(reversed(keys))
            self._wake_worker(volunteer)
            handed.extend(Assignment(key, volunteer) for key in keys)
        if handed:
            self._pops[distributor] = self._pops.get(distributor, 0) + len(handed)
        return handed

    async def trim(self, distributor: str, members: Sequence[str]) -> int:
        moved = 0
        for member in members:
            keep = self._pops.pop(member, 0)
            count = len(self._work.get(member, ())) - keep
            moved += self._steal(distributor, member, count)
        return moved

    async def steal(self, distributor: str, member: str, count: int) -> int:
        return self._steal(distributor, member, count)

    def _steal(self, distributor: str, member: str, count: int) -> int:
        moved = self._move_bottom(member, distributor, count)
        if moved:
            self._event(EventKind.STOLEN, distributor, parent=member, detail=str(moved))
        return moved

    async def lengths(self, nodes: Sequence[str]) -> list[int]:
        return [len(self._work.get(node, ())) for node in nodes]

    async def volunteers(self, distributor: str) -> list[str]:
        return list(self._volunteers.get(distributor, ()))

    # -- membership and recovery ------------------------------------------------------------------

    async def join(self, node: str, kind: NodeKind, distributor: str | None, ttl: float) -> None:
        self._members[node] = _Member(kind, distributor, time.monotonic() + ttl)
        self._departed.discard(node)
        self._event(EventKind.JOINED, node, parent=distributor or "", detail=kind.value)

    async def heartbeat(
        self, node: str, ttl: float, counters: Mapping[str, int] | None = None
    ) -> Beat:
        self._clock += 1
        member = self._members.get(node)
        if member is None:
            return Beat(False, self._clock)
        member.expires = time.monotonic() + ttl
        if counters is not None:
            member.counters = dict(counters)
        return Beat(True, self._clock)

    async def reconcile(self, node: str, keep: Sequence[str]) -> int:
        running = self._running.get(node, set())
        requeue = []
        for key in sorted(running.difference(keep)):
            running.discard(key)
            record = self._records.get(key)
            if record is not None and record.owner == node:
                record.owner = None
                requeue.append(key)
        member = self._members.get(node)
        target = member.distributor if member is not None and member.distributor else node
        self._push_bottom(target, requeue)
        return len(requeue)

    async def leave(self, node: str) -> int:
        member = self._members.pop(node, None)
        if member is None:
            return 0
        self._event(EventKind.LEFT, node, detail="left")
        return self._hand_back(node, member.distributor, max_crashes=None, reaper=node)[0]

    def _hand_back(
        self, node: str, distributor: str | None, *, max_crashes: int | None, reaper: str
    ) -> tuple[int, list[str]]:
        """Return `node`'s list and running keys to `distributor`; count crashes if asked."""
        for queue in self._volunteers.values():
            if node in queue:
                queue.remove(node)
        self._inbox.pop(node, None)
        self._pops.pop(node, None)
        self._departed.add(node)
        crashed_out: list[str] = []
        requeue: list[str] = []
        for key in sorted(self._running.pop(node, set())):
            record = self._records.get(key)
            if record is None or record.owner != node:
                continue
            record.owner = None
            if max_crashes is not None:
                record.crashes += 1
                if record.crashes >= max_crashes:
                    record.owner = reaper
                    self._running.setdefault(reaper, set()).add(key)
                    crashed_out.append(key)
                    continue
            requeue.append(key)
        if distributor is None:
            self._list(node).extendleft(requeue)
            return len(requeue), crashed_out
        leftover = list(self._work.pop(node, ()))
        self._push_bottom(distributor, requeue + leftover)
        return len(requeue) + len(leftover), crashed_out

    async def reap(self, reaper: str, max_crashes: int) -> Reaped:
        now = time.monotonic()
        judge = self._members.get(reaper)
        if judge is None or judge.expires < now:
            return Reaped()
        dead = sorted(node for node, m in self._members.items() if m.expires < now)
        requeued = 0
        crashed_out: list[str] = []
        for node in dead:
            member = self._members.pop(node)
            self._event(EventKind.LEFT, node, detail="reaped")
            count, out = self._hand_back(
                node, member.distributor, max_crashes=max_crashes, reaper=reaper
            )
            requeued += count
            crashed_out.extend(out)
        return Reaped(tuple(dead), requeued, tuple(crashed_out))

    async def nodes(self) -> list[NodeInfo]:
        now = time.monotonic()
        return [
            NodeInfo(
                node,
                m.kind,
                m.distributor,
                m.expires >= now,
                len(self._work.get(node, ())),
                len(self._running.get(node, ())),
                dict(m.counters),
            )
            for node, m in sorted(self._members.items())
        ]

    async def work_lists(self) -> dict[str, int]:
        return {node: len(work) for node, work in sorted(self._work.items()) if work}

    async def servers(self) -> list[ServerLoad]:
        return []

    async def members(self, distributor: str) -> list[str]:
        now = time.monotonic()
        return sorted(
            n for n, m in self._members.items() if m.distributor == distributor and m.expires >= now
        )

    async def events(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        self._watched_until = time.monotonic() + self._watch_seconds
        if not self._events:
            return []
        start = 0
        if after is not None:
            first = self._events[0][0]
            start = max(0, _event_number(after) + 1 - first)
        kept = itertools.islice(self._events, start, start + max(0, limit))
        return [Event(str(e[0]), e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8]) for e in kept]

    async def flush(self) -> None:
        self._reset()
        self._watched_until = -math.inf
        if self._events is not None:
            self._events.clear()

    # -- large values -----------------------------------------------------------------------------

    async def put_blob(
        self, digest: str, data: bytes, *, holder: str, until_done: bool = False
    ) -> None:
        blob = self._blobs.get(digest)
        if blob is None:
            blob = self._blobs[digest] = _Blob(data, set(), set(), 0.0)
        (blob.until_done if until_done else blob.holders).add(holder)
        blob.touched = time.monotonic()

    async def get_blob(self, digest: str) -> bytes | None:
        blob = self._blobs.get(digest)
        return None if blob is None else blob.data

    async def sweep_blobs(self, grace: float) -> int:
        now = time.monotonic()
        deleted = 0
        for digest, blob in list(self._blobs.items()):
            if blob.touched > now - grace:
                continue
            blob.holders = {key for key in blob.holders if self._has_record(key)}
            blob.until_done = {key for key in blob.until_done if key in self._records}
            if blob.holders or blob.until_done:
                blob.touched = now
            else:
                del self._blobs[digest]
                deleted += 1
        return deleted

    def _has_record(self, key: str) -> bool:
        return key in self._records or key in self._outcomes

    async def blobs(self) -> dict[str, int]:
        return {digest: len(blob.data) for digest, blob in self._blobs.items()}


def _event_number(event_id: str) -> int:
    """The number of an event id this backend gave out (an id that is none of its ids reads
    from the oldest event kept)."""
    try:
        return int(event_id)
    except ValueError:
        return 0
