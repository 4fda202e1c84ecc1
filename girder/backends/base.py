"""The `StateBackend` protocol: every piece of grid state, behind atomic primitives.

A backend stores bytes and keys; it never unpickles anything and makes no scheduling decision.
Policy (what to push where, when to steal, how to treat a crash) lives in `girder.scheduler`;
a backend only offers the primitives below, each of which is *atomic*: no other operation on the
same backend observes it half done. In memory that is one synchronous stretch of Python with no
`await` inside; in Redis it is one Lua script (or one MULTI/EXEC transaction).

The state, per backend:

- a **request record** per key: its payload (opaque bytes) and a status, *pending* (known, nobody
  running it), *running* (claimed by an owner node) or *done* (its outcome is cached). A done
  record keeps no payload: nothing runs it again, and a submission that makes the key pending
  again brings its own. A record that completed without caching is deleted, so the next request
  for the key computes it again.
- a **work list** per node: a worker's stack or a distributor's queue. Both pop from the *top*; a
  worker pushes its re-entrant requests on the top (depth first), a distributor's new work goes to
  the *bottom* (first in, first out), and stealing always takes from the bottom.
- a **volunteer queue** per distributor (first in, first out, no duplicates).
- the **waiters** of each key (node ids) and a per-node **inbox** of notifications.
- the **wait-for graph** between request keys, for cycle detection and cancellation, and the
  **roots** of each key: the jobs whose client submitted it at the top level.
- **membership**: each node's kind, its distributor, and a heartbeat lease.
- the **events** of the grid (see `Event`): a bounded stream, oldest dropped first, that the
  operations below append to as part of their atomic step when the backend publishes events
  (`Settings.events`). Dashboards and metrics read it with `events`; nothing in the grid does.
- **blobs**: large values and arguments, stored once by the digest of their bytes, each with the
  request keys that *hold* it (whose records refer to it: as long as they exist, or only until
  they are done) and when it was last put or checked.
- the **result cache**: the outcome of each done key, with the name of the function that
  computed it and, when its completion gave a `ttl`, an expiry. A cached outcome is the only
  state a backend may lose on its own: it expires, a bounded cache drops the least recently
  used, a Redis server under `maxmemory` evicts it. Losing one makes the key unknown (the next
  request computes it again); it never leaves a key "done" without its outcome.

A node id names one worker, distributor or client, unique across the grid.

Who may complete a key (the one rule about late completions, enforced by every backend): its
owner while it runs, and anyone while nobody runs it (pending, or no record). A request's value
depends only on its key, so the outcome of a run that was given up on (its node was reaped while
stalled) is as good as any while no other run is under way. A completion for a key that is done,
or that runs under another owner now, changes nothing: that other run completes the key.

Garbage: state someone wrote by hand (a record of the wrong type or with an unknown status, a
work list holding names that are no keys, a volunteer that is no node, a key owned by a node the
grid does not know) never hangs a request: an operation treats it as absent or repairs it, and a
request it cannot run is handed to a worker with an empty payload, which fails it with a clear
error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class NodeKind(StrEnum):
    """What a node does."""

    WORKER = "worker"
    DISTRIBUTOR = "distributor"
    CLIENT = "client"


class RequestState(StrEnum):
    """The status of a request key."""

    UNKNOWN = "unknown"
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


@dataclass(slots=True)
class NewRequest:
    """A request as it is handed to the backend: its key and serialized payload, and the
    readable name of its function (for the grid's events only)."""

    key: str
    payload: bytes
    name: str = ""


@dataclass(slots=True)
class Submitted:
    """What `submit` found for one request.

    `outcome` is the cached outcome when the key was already done (then nothing was registered).
    `shared` says the key was in flight already (pending, or running under an owner that will
    complete it: this submission joins that run; not reported with a cycle): what nodes count
    as requests shared while in flight.
    `partial` is the latest partial outcome published for a key that is not done (see
    `publish`): a waiter that joins a streaming request late starts from it. `cycle` is the
    list of keys of a wait-for cycle that the new wait edge closed, starting and ending with
    the waiting key (then the waiter was registered but the caller should fail).
    """

    key: str
    outcome: bytes | None = None
    cycle: tuple[str, ...] | None = None
    partial: bytes | None = None
    shared: bool = False


@dataclass(slots=True)
class Claimed:
    """A request that `claim` popped and marked running by the claiming node."""

    key: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of a key a node ran, as `complete_and_claim` records it.

    When `cache`, `ttl` is how many seconds the cached outcome lives (None: until dropped to
    make room, or cleared) and `function` the name of the grid function that computed it (for
    `cache_stats` and `cache_clear`). `error` is the readable error chain when the outcome is a
    failure (for the grid's events only)."""

    key: str
    outcome: bytes
    cache: bool
    ttl: float | None = None
    function: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """Cached outcomes and their size in bytes (a cached outcome keeps no request payload)."""

    entries: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What `cache_stats` found: the totals and the usage per function name ("" for outcomes
    completed without one)."""

    entries: int
    bytes: int
    functions: dict[str, CacheUsage]


@dataclass(frozen=True, slots=True)
class Notification:
    """A completed key and its outcome, delivered to a node that waits for it; or, with
    `cancelled_by`, a cancellation notice (`outcome` is empty): the job whose cancellation
    stopped the key. A node that runs the key stops it; a node that waits for it gets
    `girder.Cancelled`. With `partial`, a partial answer of a key that still runs (see
    `publish`): it feeds streams and resolves nothing."""

    key: str
    outcome: bytes
    cancelled_by: str | None = None
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Cancelling:
    """What one `cancel` step did: the keys it cancelled, and how many keys are left to look at
    (call `cancel` again until none are)."""

    cancelled: tuple[str, ...]
    remaining: int


@dataclass(frozen=True, slots=True)
class Assignment:
    """A request a distributor handed to a volunteer."""

    key: str
    volunteer: str


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Membership of one node, as `nodes` reports it. `counters` are the ones the node
    published with its last heartbeat (see `heartbeat`)."""

    node: str
    kind: NodeKind
    distributor: str | None
    alive: bool
    work: int
    running: int
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """One server that holds a grid's state, as it reports itself, for `servers`: where the
    load of a grid goes, and how evenly it spreads over the primaries of a cluster."""

    address: str
    """host:port where the server took this client's connection (its side of it: behind a
    proxy or NAT, the server's own address, not the one the client dialled)."""
    slots: int
    """How many of the 16,384 hash slots it serves (all of them on one server)."""
    grid_slot: bool
    """Whether it serves the grid's own slot: the live state (records, queues, membership)."""
    memory: int
    """Bytes of memory in use (`used_memory`), for every key it holds, the grid's or not."""
    cpu_seconds: float
    """CPU time since it started (system and user)."""
    commands: int
    """Commands it has run since it started."""
    ops_per_second: int
    """Commands per second, as it measured them over the last moments."""
    keys: int
    """Keys in the grid's database (every key, the grid's or not)."""


@dataclass(frozen=True, slots=True)
class Beat:
    """What `heartbeat` found: whether the node is registered, and the grid's clock.

    The clock rises at every heartbeat of any node. A node that sees it lower than at its own
    previous heartbeat knows the backend lost writes (a server restored from an older snapshot)
    and must reconcile (see `reconcile`).
    """

    registered: bool
    clock: int
    own: int | None = None
    """For a heartbeat with counters (the node's own, not its lease keeper's): the clock that
    the node's previous such heartbeat got, as the backend still holds it (0: none held). Lower
    than the node was told then: the backend lost writes, even if other nodes' heartbeats have
    raised the clock past it since. None where the backend cannot lose writes."""
    lost_writes: bool = False
    """Whether the backend knows that some of its writes since this node's previous heartbeat
    may be lost or half made: on Redis, the heartbeat was answered by another server than the
    previous one (a replica promoted in a failover, a server restarted from its append-only
    file: the writes the node made after its last heartbeat that reached the new server may be
    gone, and the clock cannot show it), or on a Redis Cluster a script of this process was
    cut short because the grid's slot moved to another node under it (which the scripts of
    this girder prevent: see `redis_keys`, `migrating`). The node must reconcile as when the
    clock goes back."""


@dataclass(frozen=True, slots=True)
class Reaped:
    """What `reap` did with the work of nodes whose lease ran out.

    `dead` names the nodes declared dead. `requeued` counts the requests put back on a queue.
    `crashed_out` lists keys that reached the crash limit: they were *not* requeued but are now
    running under the reaping node, which must complete them (with an error).
    """

    dead: tuple[str, ...] = ()
    requeued: int = 0
    crashed_out: tuple[str, ...] = field(default_factory=tuple)


class EventKind(StrEnum):
    """What a grid event reports."""

    SUBMITTED = "submitted"
    """A node asked for `key` (`name`: its function; `parent`: the key that waits on it, or
    `job` for a top-level request; `detail`: "new", "shared" (it was already pending or
    running: the asker joins that run) or "cached" (it was done))."""
    CLAIMED = "claimed"
    """`node` started running `key`."""
    FINISHED = "finished"
    """`node` completed `key` (`detail`: "cached" when its outcome was stored)."""
    FAILED = "failed"
    """`node` completed `key` with an error (`detail`: the readable error chain)."""
    CANCELLED = "cancelled"
    """`node` cancelled `key` before it ran (`job`: the cancellation; a running key is
    completed by its owner instead, with a FAILED)."""
    STOLEN = "stolen"
    """Distributor `node` moved work from the bottom of `parent`'s list to its own queue
    (`detail`: how many keys)."""
    JOINED = "joined"
    """`node` joined (`detail`: its kind; `parent`: its distributor)."""
    LEFT = "left"
    """`node` left (`detail`: "left", or "reaped" when its lease ran out)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One grid event (see `EventKind` for what each field holds per kind).

    `id` is opaque and orders the stream: pass the last one seen to `events` to read on.
    `time` is the backend's clock in seconds since the epoch."""

    id: str
    time: float
    kind: EventKind
    node: str
    key: str = ""
    name: str = ""
    parent: str = ""
    job: str = ""
    detail: str = ""


@runtime_checkable
class StateBackend(Protocol):
    """The atomic primitives a grid needs from its shared state.

    Every method is a coroutine; each is atomic as stated above unless its docstring says it
    waits. Methods never raise for an unknown key or node: they treat it as empty.
    """

    url: str
    """The URL the backend was opened from (credentials may be masked)."""

    round_trips: bool
    """Whether every operation is a round trip to a server. Workers then hold completions back
    to send several in one step; in process, holding one back costs more than sending it."""

    shared: bool
    """Whether other processes can reach this state (a server). Nodes then need a secret to
    sign what they write, and keep their leases alive from a thread."""

    async def connect(self) -> None:
        """Open connections and load scripts. Called once before any other method."""
        ...

    async def close(self) -> None:
        """Release connections. The state stays (for a shared backend)."""
        ...

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
        """Register `node` as a waiter of each request and queue the ones nobody runs.

        Atomically, for each request in order:

        1. if its key is done, report the cached outcome and do nothing else; otherwise report
           its latest partial outcome, if any (see `publish`), and go on:
        2. add `node` to the key's waiters and store the payload unless a pending
           record or one running under a registered owner exists (a new record, or one running
           under a node the grid does not know, becomes pending);
        3. unless the key is running, push it on the work list `into`: on its top when `on_top`
           (a worker's own stack), else on its bottom (a distributor's queue); a key may sit in
           several lists, whoever claims it first runs it;
        4. when `waiter_key` is given, add the wait edge `waiter_key -> key` and, if the key
           reaches `waiter_key` through wait edges (a cycle), report that cycle; otherwise, when
           `job` is given, record the key as a root of `job` (what cancelling the job lets go).

        Pushing onto `into` wakes it (see `wait_for_work`). When `dispatch`, the same atomic step
        then hands out `into`'s work to its waiting volunteers exactly as
        `hand_out(into, even_share=True)` would, and wakes `into` only if work is left over: a
        client reaches an idle worker without waking the distributor at all.

        Returns one `Submitted` per request, in order. A backend may cut a long list of requests
        into several atomic steps of consecutive requests (each step as above), so that no step
        holds a server for long.
        """
        ...

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
        """`submit`, then claim up to `claim` of `node`'s requests as `complete_and_claim` does,
        in one atomic step: a worker that parks a request hands itself the first sub-requests at
        once.
        Returns what `submit` returns and the claimed requests, top first."""
        ...

    async def claim(self, node: str) -> Claimed | None:
        """Pop the top of `node`'s work list until a pending key comes up, and run it.

        Atomically: keys that are done, running under a registered owner or have no record are
        discarded; the first other key (pending, or running under a node the grid does not know)
        is marked running with owner `node`, counted in `node`'s pops (see `trim`) and returned
        with its payload. Returns None when the list runs out.
        """
        ...

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
        """Record the outcome of a key `node` ran, and notify its waiters (`error`: the readable
        error chain of a failed outcome, for the events).

        Atomically: the key leaves `node`'s running set. Then, unless the key is done or runs
        under another owner (see "who may complete a key" above): when `cache`, the key becomes
        done with `outcome` cached under `function`'s name, to expire after `ttl` seconds (None:
        no expiry; see the result cache above), and its payload is deleted (see `payloads`);
        otherwise its record is deleted (the next request computes it again). Its wait edges and
        job roots are deleted, and every waiter other than `node` itself gets a `Notification`
        in its inbox (the caller resolves its own local waiters; a node that left gets
        nothing). The waiter set is cleared. Repeating a completion changes nothing more.
        """
        ...

    async def complete_and_claim(
        self,
        node: str,
        completions: Sequence[Completion],
        *,
        claim: int,
        volunteer_at: str | None = None,
    ) -> list[Claimed]:
        """Complete several keys, then claim up to `claim` requests: a worker's one round trip
        from the requests it finished to the ones it runs next.

        Atomically: each completion in order exactly as `complete` does; then `claim` times what
        `claim(node)` does, stopping when the list runs out (the claimed requests come in the
        order they were popped, top first). A key whose worker died running it before (see
        `reap`) is only claimed alone: first, and then nothing more; later it stays on top. So
        a request that kills its workers never raises the crash count of requests claimed with
        it. Then, when nothing was claimed (and `claim` > 0)
        and `volunteer_at` is given, what `volunteer(volunteer_at, node)` does. Returns the
        claimed requests.
        """
        ...

    async def publish(self, node: str, key: str, outcome: bytes) -> bool:
        """Record a partial answer of `key`, which `node` runs, and tell its waiters.

        Atomically: unless `key` runs under owner `node` (it is done, pending, unknown or owned
        by another node), nothing changes and this returns False. Otherwise `outcome` replaces
        the key's latest partial outcome (only the latest is kept: the backend's memory per key
        is bounded however many answers a run yields), every waiter other than `node` gets a
        partial `Notification` in its inbox (a node that left gets nothing), the waiter set
        stays, and this returns True (publishing the latest partial again notifies nobody
        twice: a call repeated after its reply was lost is harmless). So a waiter either
        registered before (and gets the notification) or registers after (and `submit` reports
        this partial): none misses the latest answer. The partial outcome is dropped when the
        key completes; a key requeued after its owner died keeps it (any answer of a key is as
        good as another).
        """
        ...

    async def take_notifications(self, node: str, timeout: float) -> list[Notification]:
        """Wait up to `timeout` seconds until `node`'s inbox is not empty, then drain it.

        This is the one method that waits. A notification posted before the call is returned
        at once: none is ever lost between calls.
        """
        ...

    async def wait_for_work(self, node: str, timeout: float) -> None:
        """Wait up to `timeout` seconds for a wake-up: a push onto `node`'s work list, or a
        volunteer arriving while that list is not empty (as each operation states).

        A wake-up since the previous call returns at once. Spurious wake-ups are allowed: callers
        re-check with `claim` or `hand_out`.
        """
        ...

    async def wait_and_claim(self, node: str, timeout: float) -> Claimed | None:
        """Wait as `wait_for_work` does, then claim as `claim` does (not atomic as a whole: a
        backend may pipeline the two, so an idle worker wakes up holding its next request)."""
        ...

    async def state(self, key: str) -> RequestState:
        """The current status of `key`."""
        ...

    async def result(self, key: str) -> bytes | None:
        """The cached outcome of `key`, or None when it is not done."""
        ...

    async def payloads(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored payloads of `keys` while they are pending or running; None for a key
        that is done (a done record keeps no payload) or has no record."""
        ...

    async def cancel(
        self,
        node: str,
        job: str,
        *,
        roots: Sequence[str] = (),
        below: str | None = None,
    ) -> Cancelling:
        """One step of cancelling `job` (repeat until nothing `remaining`), on behalf of `node`.

        `roots` are the keys the job submitted at the top level (its client keeps them). With
        `below`, what is cancelled is not a job but what the request `below` waits for (it ran
        out of time): `job` then only names the cancellation. Atomically: the first step removes
        `job` from the roots of `roots` (or `below`'s wait edges) and looks at those keys. Then
        each key that no job roots and no key waits for any more is cancelled: its wait edges to
        the keys it waits for are deleted (those keys are looked at in turn), and if it is
        pending (never started) its record is deleted and each of its waiters gets a
        cancellation `Notification`; if it runs,
        its owner gets one (and completes the key with a `Cancelled` error, never cached). Keys
        that are done, or still needed by another job or a waiting key, are left alone. A step
        looks at a bounded number of keys; repeating a finished cancellation changes nothing.
        """
        ...

    async def ask_to_cancel(self, owner: str, job: str) -> bool:
        """Ask the client `owner` (whose job `job` is) to cancel it: a cancellation notice with
        an empty key in its inbox. False (nothing sent) when `owner` is not registered."""
        ...

    # -- distribution -----------------------------------------------------------------------------

    async def volunteer(self, distributor: str, node: str) -> None:
        """Put `node` on `distributor`'s volunteer queue unless it is already there; if it was
        not there and the distributor's work list is not empty, wake the distributor."""
        ...

    async def hand_out(self, distributor: str, *, even_share: bool = False) -> list[Assignment]:
        """Give queued work to volunteers: one request each, or an even share of the queue.

        Atomically, while `distributor` has volunteers and its work list has a key that may run
        (as `claim` decides): pop the oldest volunteer, pop the top of the work list (discarding
        the keys `claim` would discard) and push the key on the top of the volunteer's work
        list. A volunteer that is not registered (gone, or a name no node joined with) is
        dropped and gets nothing; one whose lease ran out but is not reaped yet may get work,
        which its reaping gives back. With `even_share`,
        each of the V volunteers waiting at the start gets up to ceil(N / V) of the N queued keys
        instead of one (pushed so that the oldest is claimed first; a backend may cap a share to
        keep the step short). Each key handed out counts in the distributor's pops (see `trim`).
        """
        ...

    async def trim(self, distributor: str, members: Sequence[str]) -> int:
        """Move each member's excess work to the bottom of `distributor`'s work list.

        Atomically, per member: `keep` is the number of keys it claimed since the previous trim
        (the counter is reset); all but `keep` keys are taken from the *bottom* of its work
        list and pushed on the bottom of the distributor's list, oldest first (a backend may
        move fewer per call to keep the step short). The lists that departed members left too
        long to move at once (see `reap`) move too. Returns how many keys moved.
        """
        ...

    async def steal(self, distributor: str, member: str, count: int) -> int:
        """Move up to `count` keys from the bottom of `member`'s work list to the bottom of
        `distributor`'s, oldest first. Returns how many moved."""
        ...

    async def lengths(self, nodes: Sequence[str]) -> list[int]:
        """The length of each node's work list."""
        ...

    async def volunteers(self, distributor: str) -> list[str]:
        """The distributor's volunteer queue, oldest first."""
        ...

    # -- membership and recovery ------------------------------------------------------------------

    async def join(self, node: str, kind: NodeKind, distributor: str | None, ttl: float) -> None:
        """Register `node` (or renew its registration) with a lease of `ttl` seconds."""
        ...

    async def heartbeat(
        self, node: str, ttl: float, counters: Mapping[str, int] | None = None
    ) -> Beat:
        """Extend `node`'s lease and raise the grid's clock. Not `registered` when the node is
        not (it was reaped, or the backend lost its state): the node must `join` again and
        resubmit what it waits for. A registered node's `counters` (what it ran, failed...),
        when given, replace the ones `nodes` reports for it (`join` clears them)."""
        ...

    async def reconcile(self, node: str, keep: Sequence[str]) -> int:
        """Give back the keys `node`'s running set names but `node` does not run.

        Atomically: every key in `node`'s running set that is not in `keep` leaves the set and,
        if it still runs under `node`, becomes pending at the bottom of `node`'s distributor's
        work list (of its own without one). A node calls it when the backend may have lost
        writes, with the keys it really runs; the backend may then also repair what lost writes
        can leave behind (on Redis: stored blob bytes that the blob index no longer names are
        indexed again, so that a sweep finds them). Returns how many keys were given back.
        """
        ...

    async def leave(self, node: str) -> int:
        """Deregister `node` gracefully: its work list and the keys it was running go back to
        the bottom of its distributor's work list (running ones become pending again).
        Returns how many keys were handed back."""
        ...

    async def reap(self, reaper: str, max_crashes: int) -> Reaped:
        """Declare every node whose lease ran out dead, and recover its work.

        Atomically per dead node: its work list moves to the bottom of its distributor's list (or,
        with no distributor, stays where it is for a node of that name that joins later; a
        backend may move a long list over several `trim`s of the distributor); each key
        it was running has its crash count raised by one and, below `max_crashes`, becomes pending
        and is pushed on the distributor's list; at the limit it is re-owned by `reaper` and
        reported in `crashed_out`. The node's membership, volunteer entries and inbox are removed.

        A `reaper` whose own lease ran out, or that is not registered, reaps nobody: whatever
        kept it from beating (an outage it waited out with this very call pending, a stall of
        its process) may have kept the others from beating too, and judged right after it
        their leases look out. It beats again first; others get that long to do so.
        """
        ...

    async def nodes(self) -> list[NodeInfo]:
        """Every registered node, with liveness and work counts."""
        ...

    async def members(self, distributor: str) -> list[str]:
        """The live nodes whose distributor is `distributor`."""
        ...

    async def work_lists(self) -> dict[str, int]:
        """Every work list that is not empty, by name, with its length: also the queues of
        pools that no registered node serves (`girder status`). A reading, not atomic: a
        backend may scan its keys."""
        ...

    async def servers(self) -> list[ServerLoad]:
        """The figures of each server that holds the grid's state (every primary of a cluster;
        none in memory: the state is in this process). A reading of each server in turn, not
        atomic; a server that cannot be reached raises `BackendError`, as other reads do."""
        ...

    async def cache_size(self) -> int:
        """How many outcomes are cached (a shared backend may count them by a scan)."""
        ...

    async def cache_stats(self) -> CacheStats:
        """The cached outcomes, their bytes, and both per function.

        Not atomic as a whole on a shared backend (it scans in steps): an outcome cached, dropped
        or expiring meanwhile may or may not be counted; every other one is counted once.
        Expired outcomes are never counted."""
        ...

    async def cache_clear(self, function: str | None = None) -> int:
        """Delete the cached outcomes (only those of the function named `function`, if given).

        Done keys become unknown: the next request computes them again. Pending and running
        keys, and everything else, are left alone. Each deletion is atomic; the whole is not on
        a shared backend (it scans in steps): an outcome cached meanwhile may stay. Clearing
        again deletes nothing more. Returns how many outcomes were deleted."""
        ...

    async def forget(self, keys: Sequence[str]) -> int:
        """Delete the cached outcomes of `keys`: those of them that are done become unknown, so
        the next request computes them again (the scheduler forgets an outcome whose large
        value's blob the backend lost). Pending and running keys, and keys without a record,
        are left alone.

        Atomic as a whole. Forgetting again deletes nothing more (a call sent again after its
        reply was lost returns what the first one deleted). Returns how many were deleted."""
        ...

    # -- events -----------------------------------------------------------------------------------

    async def events(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Up to `limit` grid events, oldest first: those after the event whose id is `after`,
        or from the oldest one kept when `after` is None.

        What publishes (when the backend publishes events at all), each as part of the same
        atomic step: `submit` one SUBMITTED per request ("new" when it made the key pending,
        "shared" when it found it pending or running, "cached" when done); every claim one
        CLAIMED (also those of `submit_and_claim`, `complete_and_claim` and `wait_and_claim`); a
        completion that records an outcome (not one that changes nothing) one FINISHED, or
        FAILED when it carries an error; `cancel` one CANCELLED per pending key it deletes;
        `trim` and `steal` one STOLEN per member they moved
        keys from; `join` one JOINED; `leave` and `reap` one LEFT per node that departed. A
        journaled step sent again after its reply was lost publishes nothing twice; a repeated
        completion or `leave` changes nothing and publishes nothing.

        Events are published only while watched: every call of `events` (even with `limit` 0)
        keeps them published for `Settings.events_watch` seconds from then, and a step taken
        while nobody watches publishes nothing (so a grid without a dashboard pays nothing for
        them). A `flush` ends the watch.

        The stream is bounded: the oldest events are dropped first, so a reader that falls
        behind misses some (an `after` that was dropped reads on from the oldest kept). Ids
        increase along the stream (a `flush` may start it again). Does not wait.
        """
        ...

    async def flush(self) -> None:
        """Delete all of this grid's state (tests; `girder.backends.open_backend(url).flush()`)."""
        ...

    # -- large values -----------------------------------------------------------------------------

    async def put_blob(
        self, digest: str, data: bytes, *, holder: str, until_done: bool = False
    ) -> None:
        """Store `data` as the blob `digest` unless one is stored, and record request `holder`
        as one of its holders; the blob's grace period starts again (see `sweep_blobs`). With
        `until_done`, `holder` holds it only until its key is done: its arguments or a partial
        answer, which a done record no longer refers to (it keeps no payload and no partial).

        Atomically as `get_blob` and `sweep_blobs` see it: a blob is absent or whole, never
        part-written (a backend may send a large one in several parts out of sight, then
        publish it in one step). A blob already stored is never overwritten: its bytes stay
        (put-if-absent). The backend does not check that `digest` names `data`: readers check
        the bytes against the digest their signed record names. Repeating a put changes
        nothing more. A caller puts a blob before it writes the record that refers to it.
        """
        ...

    async def get_blob(self, digest: str) -> bytes | None:
        """The bytes of blob `digest`, or None when none is stored. A backend may read a large
        blob in several parts: one deleted meanwhile may read short (its digest then fails)."""
        ...

    async def sweep_blobs(self, grace: float) -> int:
        """Delete the blobs no request record refers to any more.

        Atomically per blob put or checked more than `grace` seconds ago: the holders whose
        records no longer refer to it are forgotten (those that have no request record, and
        those that hold it `until_done` whose key is done or has no record); if none is left, the
        blob is deleted, else it counts as checked now. So a blob lives as long as some record
        refers to it, plus at least `grace` seconds after its last put (the time a
        node has to write the record after the blob, or to fetch a value whose record went at
        once: a result that is not cached). Returns how many blobs it deleted (a call sent
        again after its reply was lost counts only what the repeat deleted).
        """
        ...

    async def blobs(self) -> dict[str, int]:
        """Every stored blob: digest -> size in bytes."""
        ...
