"""The checks of the chaos test (tests/chaos.py) over a whole run: what the harness did (the
`Timeline`), the runs every grid function logged (at most one run of a key at a time, and why a
key ran again), the clients' answers (right, none lost), what is left in Redis (leaks), and what
the nodes' logs say (requests the grid failed, exceptions nobody handled)."""

from __future__ import annotations

import bisect
import itertools
import math
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from chaos_client import read_events
from processes import FAST_RECOVERY

from girder.backends import redis_keys
from girder.backends.cluster import key_slot
from girder.backends.redis_keys import RedisKeys

LEASE = float(FAST_RECOVERY["GIRDER_HEARTBEAT_TTL"])
SHARDED = os.environ.get("GIRDER_LAYOUT", "one-slot") == "sharded"
"""The grid runs in the sharded layout (`Settings.layout`, from the environment the run's
processes inherit): each record in the slot of its own key, on any primary."""
"""Seconds without a heartbeat before a node counts as dead (the nodes' GIRDER_HEARTBEAT_TTL)."""

PREFIX = "{girder}:"
"""Every key of the grid starts with this (the default key prefix)."""
KEYS = RedisKeys("girder")
"""The grid's key names: the bytes of its blobs live outside PREFIX, in slots of their own."""


# -- what happened ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Something the harness did, at a monotonic time (the processes log the same clock)."""

    t: float
    kind: str
    detail: str
    pid: int | None = None
    wall: float = field(default_factory=time.time)
    """The same moment in wall-clock time (the processes' logs have UTC timestamps)."""


@dataclass(frozen=True)
class Failover:
    """A primary of a Redis Cluster killed (kill -9) and replaced by its replica. Replication
    is asynchronous: the writes it acknowledged from `lost_from` on may be gone (just before
    the kill, or since its replication was stalled on purpose)."""

    port: int
    grid: bool
    """It served the grid's slot (else only slots of blobs)."""
    lost_from: float
    killed: float
    promoted: float
    """When its replica served its slots."""


@dataclass
class Timeline:
    """The faults as they happened: kills, stops, Redis downtimes and failovers."""

    start: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    killed: dict[int, float] = field(default_factory=dict)
    """pid -> when it was killed (kill -9)."""
    stops: list[tuple[int, float, float]] = field(default_factory=list)
    """(pid, SIGSTOP time, SIGCONT time)."""
    redis_down: list[tuple[float, float]] = field(default_factory=list)
    """Redis restarts that kept the data: (killed, back)."""
    redis_wiped: list[tuple[float, float]] = field(default_factory=list)
    """Redis restarts that lost every key: (killed, back)."""
    redis_paused: list[tuple[float, float]] = field(default_factory=list)
    """Redis SIGSTOPped: (stopped, continued)."""
    failovers: list[Failover] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, detail: str, pid: int | None = None, at: float | None = None) -> Event:
        """Record an event now, or `at` an earlier moment read from the same clock."""
        event = Event(time.monotonic() if at is None else at, kind, detail, pid)
        self.events.append(event)
        return event

    def before(self, t: float, count: int = 3) -> list[Event]:
        """The last `count` events at or before `t`."""
        return [e for e in self.events if e.t <= t][-count:]

    def rel(self, t: float) -> str:
        return f"t+{t - self.start:7.3f}s"

    def format(self) -> str:
        lines = [f"  (t+0 is monotonic {self.start:.3f}; UTC times match the logs)"]
        for e in self.events:
            pid = f" pid {e.pid}" if e.pid else ""
            utc = datetime.fromtimestamp(e.wall, UTC).strftime("%H:%M:%S.%f")[:-3]
            lines.append(f"  {self.rel(e.t)} {utc} {e.kind:<18} {e.detail}{pid}")
        return "\n".join(lines)


# -- runs: at most one at a time -------------------------------------------------------------------


@dataclass
class Run:
    """One run of a grid function, from the run logs."""

    key: str
    pid: int
    node: str
    start: float
    end: float | None = None
    how: str = "open"
    """ok, error, cancelled (its code ended), killed (its process died), open (never ended)."""
    first_after_stop: bool = False
    """The first run its process started on waking from a stop past the lease (set by
    `flag_first_runs_after_stops`): the only run that may be a stale claim."""


def read_runs(folder: Path, killed: dict[int, float]) -> list[Run]:
    """Every run logged under `folder`; a run of a killed process ends at the kill."""
    runs: list[Run] = []
    for path in sorted(folder.glob("runs-*.log")):
        open_runs: dict[tuple[str, int], list[Run]] = defaultdict(list)
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if parts[:1] == ["start"] and len(parts) == 5:
                run = Run(parts[1], int(parts[2]), parts[3], float(parts[4]))
                runs.append(run)
                open_runs[run.key, run.pid].append(run)
            elif parts[:1] == ["end"] and len(parts) == 6:
                waiting = open_runs.get((parts[1], int(parts[2])))
                if waiting:
                    run = waiting.pop(0)
                    run.end, run.how = float(parts[4]), parts[5]
        for run in runs:
            if run.end is None and run.pid in killed:
                run.end, run.how = killed[run.pid], "killed"
    return runs


@dataclass(frozen=True)
class Overlap:
    """Two runs of one key at the same time."""

    first: Run
    second: Run
    excuse: str | None
    """Why the grid may do this (a lease expired, Redis lost data), or None: a violation."""

    @property
    def kind(self) -> str:
        """The excuse in a word or two, for the summary."""
        if self.excuse is None:
            return "unexplained"
        if "SIGSTOP" in self.excuse:
            return "runner stopped past its lease"
        if "claim" in self.excuse:
            return "stale claim run on waking"
        if "failed over" in self.excuse:
            return "failover lost writes"
        return "Redis lost data"


def _long_stop(timeline: Timeline, pid: int, since: float, until: float) -> str | None:
    """A SIGSTOP of `pid` longer than the lease, at some time in [since, until]."""
    for stopped, start, end in timeline.stops:
        if stopped == pid and start <= until and end >= since and end - start > LEASE:
            return f"pid {pid} SIGSTOPped {end - start:.2f}s (> lease {LEASE}s) at {start:.3f}"
    return None


def flag_first_runs_after_stops(runs: list[Run], timeline: Timeline) -> None:
    """Flag the first run each process started within a lease of waking from a stop past the
    lease (`Run.first_after_stop`)."""
    starts: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        starts[run.pid].append(run)
    for pid_runs in starts.values():
        pid_runs.sort(key=lambda r: r.start)
    for pid, start, end in timeline.stops:
        pid_runs = starts.get(pid, [])
        at = bisect.bisect_left([r.start for r in pid_runs], end)
        if end - start > LEASE and at < len(pid_runs) and pid_runs[at].start <= end + LEASE:
            pid_runs[at].first_after_stop = True


def _stale_claim(timeline: Timeline, run: Run) -> str | None:
    """`run` is the first its process started on waking from a stop past the lease: it may be
    the claim the process was starting when it was stopped, whose lease lapsed while it slept.
    A worker confirms its lease before it starts any other claim (and drops them if it was
    reaped), so a second run started on waking is no stale claim."""
    if not run.first_after_stop:
        return None
    for stopped, start, end in timeline.stops:
        if stopped == run.pid and end - start > LEASE and end <= run.start <= end + LEASE:
            return f"pid {run.pid} ran a claim it was starting when a {end - start:.2f}s stop came"
    return None


def _lease_expired(timeline: Timeline, first: Run, second: Run) -> str | None:
    """A runner's claim lapsed while its process was stopped past the lease: the first run
    went on through the stop, or either run is the claim a process was starting when it was
    stopped (see `_stale_claim`)."""
    return (
        _long_stop(timeline, first.pid, first.start, second.start)
        or _stale_claim(timeline, first)
        or _stale_claim(timeline, second)
    )


def _lossy_restart(timeline: Timeline, since: float, until: float, fsync: str) -> str | None:
    """A Redis restart in [since, until] that lost data (documented: requests run again), or
    just before `since` (a request claimed before the loss may start running just after it)."""
    for down, up in timeline.redis_wiped:
        if since <= up + LEASE and down <= until:
            return f"Redis came back empty at {up:.3f}"
    if fsync == "always":
        return None
    for _down, up in timeline.redis_down:
        if since <= up <= until:
            return f"Redis restarted at {up:.3f} with appendfsync {fsync} (may lose writes)"
    return None


def _failover_loss(timeline: Timeline, first: Run, second: Run) -> str | None:
    """A failover of the grid's primary (in the sharded layout: of any primary, which holds
    records too) that may have lost a write of `first` (documented: the key runs again): its
    claim (it started before the replica took over) or its completion (sent within a lease of
    its end, at or after the writes that were lost began)."""
    sent_by = math.inf if first.end is None else first.end + LEASE
    for failover in timeline.failovers:
        if (
            (failover.grid or SHARDED)
            and first.start <= failover.promoted
            and sent_by >= failover.lost_from
            and second.start >= failover.lost_from
        ):
            which = "the grid's primary" if failover.grid else "a primary of records"
            return (
                f"{which} (port {failover.port}) failed over at "
                f"{failover.killed:.3f}, its writes since {failover.lost_from:.3f} maybe lost"
            )
    return None


def _blob_loss(timeline: Timeline, first: Run, second: Run) -> str | None:
    """A failover of a primary of blobs that may have lost the bytes of `first`'s value (if it
    was a blob: a fifth of the values are): its blob was put within a lease of its end, at or
    after the writes that were lost began and before the replica took over. Whoever reads
    that value then finds its bytes gone, forgets it and has it computed again (documented in
    docs/large-values.md)."""
    assert first.end is not None
    for failover in timeline.failovers:
        if (
            not failover.grid
            and first.end <= failover.promoted
            and first.end + LEASE >= failover.lost_from
            and second.start >= failover.lost_from
        ):
            return f"port {failover.port} failed over at {failover.killed:.3f}"
    return None


def find_overlaps(runs: list[Run], timeline: Timeline, fsync: str) -> list[Overlap]:
    """Pairs of runs of one key that overlap in time, each with its excuse (if any)."""
    flag_first_runs_after_stops(runs, timeline)
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    found = []
    for key_runs in by_key.values():
        key_runs.sort(key=lambda r: r.start)
        for i, first in enumerate(key_runs):
            for second in key_runs[i + 1 :]:
                if first.end is not None and second.start >= first.end:
                    continue
                excuse = _lease_expired(timeline, first, second)
                excuse = excuse or _lossy_restart(timeline, first.start, second.start, fsync)
                excuse = excuse or _failover_loss(timeline, first, second)
                found.append(Overlap(first, second, excuse))
    return found


OUTAGE_RETRY = 2.0
"""The longest delay between two tries of an operation while Redis cannot be reached."""


def _completion_stored_by(timeline: Timeline, end: float) -> float:
    """When the completion of a run that ended at `end` was stored at the latest: within a
    lease, unless a failover held it up (of the grid's primary, or of the one its value's
    blob goes to: it waits and retries until the replica took over)."""
    stored = end + LEASE
    for failover in timeline.failovers:
        if failover.killed <= stored and failover.promoted >= end:
            stored = max(stored, failover.promoted + OUTAGE_RETRY + LEASE)
    return stored


def rerun_reason(first: Run, second: Run, timeline: Timeline, fsync: str) -> str:
    """Why a key ran again after an earlier run of it ended (a finished key should be cached).
    The runs are flagged (`flag_first_runs_after_stops`)."""
    if first.how == "killed":
        return "its runner was killed mid-run"
    if first.how in ("error", "cancelled"):
        return f"the earlier run ended: {first.how}"
    assert first.end is not None
    if _lossy_restart(timeline, first.start, second.start, fsync):
        return "Redis lost the result (a restart without the data)"
    if _failover_loss(timeline, first, second):
        where = "a primary of records" if SHARDED else "the grid's primary"
        return f"a failover of {where} lost its claim or its completion"
    # The completion goes out right after the run: a death or a stop soon after loses it.
    sending = _completion_stored_by(timeline, first.end)
    killed_at = timeline.killed.get(first.pid)
    if killed_at is not None and first.end <= killed_at <= min(sending, second.start):
        return "its runner was killed before the completion was stored"
    if _long_stop(timeline, first.pid, first.start, min(sending, second.start)):
        return "its runner was SIGSTOPped past its lease before the completion was stored"
    if _stale_claim(timeline, second):
        return (
            "the second runner woke from a stop past its lease and ran the stale claim it was "
            "starting when it was stopped"
        )
    if _blob_loss(timeline, first, second):
        return "a failover of a primary of blobs lost the bytes of its value (computed again)"
    return "UNEXPLAINED (a finished, cached key ran again)"


def reruns(runs: list[Run], timeline: Timeline, fsync: str) -> dict[str, list[str]]:
    """Keys that ran more than once (one after the other): key -> the reason of each rerun."""
    flag_first_runs_after_stops(runs, timeline)
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    found: dict[str, list[str]] = {}
    for key, key_runs in by_key.items():
        key_runs.sort(key=lambda r: r.start)
        reasons = [
            rerun_reason(first, second, timeline, fsync)
            for first, second in itertools.pairwise(key_runs)
            if first.end is not None and second.start >= first.end
        ]
        if reasons:
            found[key] = reasons
    return found


# -- answers: right, none lost ---------------------------------------------------------------------


@dataclass
class AnswerReport:
    completed: int = 0
    wrong: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    incarnations: dict[int, list[int]] = field(default_factory=dict)


def check_answers(
    answers: dict[int, Path], expected: dict[str, tuple[str, int]], killed: dict[int, float]
) -> AnswerReport:
    """Every answer right; every job a surviving client submitted answered. `expected`: job
    id -> (the call, readable, and its right value)."""
    report = AnswerReport()
    for slot, path in answers.items():
        submitted: dict[int, set[str]] = defaultdict(set)
        answered: dict[int, set[str]] = defaultdict(set)
        pids: list[int] = []
        for event in read_events(path):
            pid = event["pid"]
            if pid not in pids:
                pids.append(pid)
            if event["event"] == "submit":
                submitted[pid].add(event["job"])
            elif event["event"] == "answer":
                job_id, (call, right) = event["job"], expected[event["job"]]
                answered[pid].add(job_id)
                report.completed += 1
                if event["value"] != right:
                    report.wrong.append(
                        f"{job_id} {call}: got {event['value']!r}, expected {right} "
                        f"(client pid {pid})"
                    )
            elif event["event"] == "error":
                answered[pid].add(event["job"])
                report.errors.append(f"{event['job']} (client pid {pid}): {event['error']}")
        report.incarnations[slot] = pids
        for pid in pids:
            if pid not in killed:
                for job_id in sorted(submitted[pid] - answered[pid]):
                    report.lost.append(f"{job_id} {expected[job_id][0]} (client pid {pid})")
    return report


# -- Redis: what is left ---------------------------------------------------------------------------

RECORD = redis_keys.RECORD.rstrip(":")
"""The kind of a request's record (`r`), as `check_leaks` splits a key's name."""
RECORD_KINDS = tuple(part.rstrip(":") for part in redis_keys._PER_ID.values())
"""Keys per request or per node (`r:<key>`, `inbox:<node>`, ...), from the backend's layout."""
GLOBAL_KEEP = (
    "clock", "departed", "events", "eventsbase", "farewells", "functions", "timekeeper",
    "resultsdropped", "layout",
)  # fmt: skip
"""Global bookkeeping that may stay when the grid is idle (counters; the recently departed; the
capped list of grid events and its first number; the function table of cached results; when
the latest record of a result moved to its own slot was dropped; the sharded layout's mark)."""
GLOBAL_EMPTY = ("pops", "leases")
"""Global hashes and sets of nodes: no entry should stay once every node is gone. Any other
global key of the layout (say `corrupt`) is reported, and so is a key the layout does not name."""


def decode(value: bytes | None) -> str:
    return "" if value is None else value.decode(errors="replace")


def scan_grid(db: redis.Redis) -> dict[str, str]:
    """Every key of the grid and its type."""
    keys = [decode(k) for k in db.scan_iter(match=PREFIX.replace("{", "\\{") + "*", count=1000)]
    types = _pipeline(db, [("TYPE", key) for key in keys])
    return {key: decode(kind) for key, kind in zip(keys, types, strict=True)}


def _pipeline(db: redis.Redis, commands: list[tuple[str, ...]]) -> list[Any]:
    pipe = db.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute())


def record_states(
    db: redis.Redis, servers: list[redis.Redis] | None = None
) -> dict[str, tuple[str, str, str]]:
    """Request key -> (status, owner, crashes) of every request record (in the sharded
    layout, those in their own slots on every server of `servers`)."""
    if SHARDED:
        states: dict[str, tuple[str, str, str]] = {}
        for server in servers or [db]:
            names = own_records(server)
            fields = _pipeline(server, [("HMGET", n, "s", "o", "c") for n in names])
            for name, (s, o, c) in zip(names, fields, strict=True):
                key = KEYS.own_record_key(name)
                if key is not None:
                    states[key] = (decode(s), decode(o), decode(c))
        return states
    keys = [k for k in scan_grid(db) if k.startswith(PREFIX + "r:")]
    fields = _pipeline(db, [("HMGET", k, "s", "o", "c") for k in keys])
    return {
        key.removeprefix(PREFIX + "r:"): (decode(s), decode(o), decode(c))
        for key, (s, o, c) in zip(keys, fields, strict=True)
    }


def own_records(server: redis.Redis) -> list[str]:
    """The names of the records in their own slots (the sharded layout) on `server`."""
    return [decode(n) for n in server.scan_iter(match=KEYS.own_record_pattern(), count=1000)]


def record_server(servers: list[redis.Redis]) -> Any:
    """A function: record name -> the server of `servers` that holds it (the primary of its
    slot, as the cluster's slot map says; the one server when there is one)."""
    if len(servers) == 1:
        return lambda name: servers[0]
    by_port = {int(s.connection_pool.connection_kwargs["port"]): s for s in servers}
    owner: list[redis.Redis | None] = [None] * 16384
    for start, end, primary, *_ in servers[0].execute_command("CLUSTER", "SLOTS"):
        for slot in range(int(start), int(end) + 1):
            owner[slot] = by_port.get(int(primary[1]))
    return lambda name: owner[key_slot(name)]


def status_of(db: redis.Redis, servers: list[redis.Redis]) -> Any:
    """A function: request key -> its record's status ("" for none), in either layout."""
    if not SHARDED:
        return lambda key: decode(db.hget(KEYS.record(key), redis_keys.F_STATUS))
    at = record_server(servers)

    def status(key: str) -> str:
        name = KEYS.own_record(key)
        return decode(at(name).hget(name, redis_keys.F_STATUS))

    return status


def scan_blobs(servers: list[redis.Redis]) -> dict[str, set[str]]:
    """The blob keys of the grid on every server (each primary of a cluster): digest -> what
    is stored under it (`blob`, `blobgen`, `blobpart`)."""
    found: dict[str, set[str]] = defaultdict(set)
    for db in servers:
        for name in map(decode, db.scan_iter(match=KEYS.blob_pattern(), count=1000)):
            if KEYS.is_blob_key(name):
                digest, _, what = name.partition("}:")
                found[digest.partition("/")[2]].add(what.partition(":")[0])
    return found


def blob_leaks(
    db: redis.Redis, servers: list[redis.Redis]
) -> tuple[set[str], set[str], set[str], dict[str, list[str]]]:
    """What is wrong with the blobs once every node stopped and a sweep with no grace ran
    (`StateBackend.sweep_blobs(0)`): every blob left must be held by cached results, and
    indexed with its bytes in place (bytes that no index entry names are never swept). A
    cached value whose bytes are gone (a failover lost them) is no leak: the next caller that
    asks for it forgets it and has it computed again. The digests indexed, those rightly held
    or held with their bytes lost, and pattern -> examples of what is wrong."""
    stored = scan_blobs(servers)
    status = status_of(db, servers)
    index = {decode(d) for d in db.zrange(KEYS.blobs, 0, -1)}
    leaked: dict[str, list[str]] = defaultdict(list)
    held: set[str] = set()
    lost: set[str] = set()
    for digest in sorted(index):
        holders = [decode(k) for k in db.smembers(PREFIX + redis_keys.BLOB_HOLDERS + digest)]
        states = {status(k) for k in holders}
        if "blob" not in stored.get(digest, set()) and holders and states == {"d"}:
            lost.add(digest)  # not a leak: who asks for the value has it computed again
        elif "blob" not in stored.get(digest, set()):
            leaked["blob index entry whose bytes are gone, held by no cached result"].append(
                f"{digest} held by {holders[:3]} in states {sorted(states)}"
            )
        elif not holders or states != {"d"}:
            leaked["blob no cached result holds (the sweep left it)"].append(
                f"{digest} held by {holders[:3]} in states {sorted(states)}"
            )
        else:
            held.add(digest)
    for digest, kinds in sorted(stored.items()):
        if digest not in index:
            leaked["blob keys no index entry names (no sweep finds them)"].append(
                f"{digest}: {sorted(kinds)}"
            )
        elif kinds != {"blob", "blobgen"}:
            leaked["blob keys other than its bytes and generation"].append(
                f"{digest}: {sorted(kinds)}"
            )
    return index, held, lost, dict(leaked)


@dataclass
class LeakReport:
    cached: int = 0
    moved: int = 0
    """Cached results moved to their own keys' slots (`spread_results`), on any server."""
    cached_blobs: int = 0
    """Blobs that cached results hold (their bytes, on any server)."""
    lost_values: int = 0
    """Blobs that cached results hold whose bytes a failover lost (computed again when asked)."""
    own_inboxes: int = 0
    """Keys of nodes' own inboxes left, each expiring (`spread_notifications`: a post that came
    after its node left, or a poster that died between its steps); one without an expiry is
    a leak."""
    step_journals: int = 0
    """Journal entries of records' steps left (the sharded layout), each expiring."""
    leaked: dict[str, list[str]] = field(default_factory=dict)
    """Pattern -> examples (key, and what it holds)."""
    leaked_bytes: int = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.leaked.values())


def _id_pattern(ident: str, names: dict[str, str]) -> str:
    if ident in names:
        return f"<{names[ident]}>"
    if len(ident) >= 32 and all(c in "0123456789abcdef" for c in ident.lower()):
        return "<request key>"
    return "<other>"


def _describe_key(db: redis.Redis, key: str, kind: str) -> str:
    if kind == "hash":
        fields = {decode(k): decode(v)[:40] for k, v in db.hgetall(key).items() if k != b"pl"}
        return f"{key} hash {fields}"
    if kind == "list":
        items = [decode(v)[:20] for v in db.lrange(key, 0, 4)]
        return f"{key} list len {db.llen(key)} {items}"
    if kind == "set":
        return f"{key} set {sorted(decode(v)[:20] for v in db.smembers(key))[:5]}"
    if kind == "zset":
        return f"{key} zset {[(decode(m), s) for m, s in db.zrange(key, 0, 4, withscores=True)]}"
    return f"{key} {kind} {decode(db.get(key))[:40] if kind == 'string' else ''}"


_NO_EXPIRY, _GONE = -1, -2
"""What PTTL answers for a key without an expiry, and for one that is gone (it expired since a
scan named it: the 30 s journal entries of records' steps often do). 0 is a key that expires
within the millisecond."""


def _own_record_leaks(server: redis.Redis, names: dict[str, str], report: LeakReport) -> None:
    """The sharded layout's keys on `server`: done records count as cached results, journal
    entries of records' steps expire (each a leak without an expiry), anything else leaks."""
    for name in own_records(server):
        if decode(server.hget(name, "s")) == "d":
            report.cached += 1
        else:
            report.leaked.setdefault(
                f"{{girder:<request key>}}:r (status {decode(server.hget(name, 's'))})", []
            ).append(_describe_key(server, name, decode(server.type(name))))
    expiring, forever = _by_expiry(server, KEYS.own_step_pattern())
    report.step_journals += expiring
    if forever:
        report.leaked.setdefault("journal entry of a record's step without expiry", []).extend(
            forever
        )


def _by_expiry(server: redis.Redis, pattern: str) -> tuple[int, list[str]]:
    """Of the keys on `server` that match `pattern`: how many expire, and the names of those
    without an expiry (those gone since the scan named them count as neither)."""
    expiring, forever = 0, []
    for name in map(decode, server.scan_iter(match=pattern, count=1000)):
        ttl = server.pttl(name)
        if ttl == _NO_EXPIRY:
            forever.append(name)
        elif ttl != _GONE:
            expiring += 1
    return expiring, forever


def check_leaks(db: redis.Redis, names: dict[str, str], servers: list[redis.Redis]) -> LeakReport:
    """What is left after every node stopped and a sweep of blobs with no grace: cached
    results (with the blobs they hold) and the global counters only. `db`: the server of the
    grid's slot; `servers`: every server (the primaries of a cluster), where blobs live."""
    report = LeakReport()
    indexed, held, lost, blobs = blob_leaks(db, servers)
    report.lost_values = len(lost)
    report.leaked.update(blobs)
    for server in servers:
        report.moved += sum(1 for _ in server.scan_iter(match=KEYS.result_pattern(), count=1000))
        _own_record_leaks(server, names, report)
        expiring, forever = _by_expiry(server, KEYS.own_inbox_pattern())
        report.own_inboxes += expiring
        for name in forever:
            report.leaked.setdefault("own inbox without expiry", []).append(
                _describe_key(server, name, decode(server.type(name)))
            )
    for key, kind in sorted(scan_grid(db).items()):
        rest = key.removeprefix(PREFIX)
        part, _, ident = rest.partition(":")
        if part == RECORD and decode(db.hget(key, "s")) == "d":
            report.cached += 1
            continue
        if rest in GLOBAL_KEEP or rest == redis_keys.BLOBS:  # the index: see blob_leaks
            continue
        if part + ":" == redis_keys.BLOB_HOLDERS and ident in indexed:  # see blob_leaks
            report.cached_blobs += ident in held
            continue
        if rest in GLOBAL_EMPTY:
            pattern = f"{PREFIX}{rest}[<node>]"
        elif part in RECORD_KINDS:
            blob = part + ":" in (redis_keys.BLOB_HOLDERS, redis_keys.BLOB_UNTIL_DONE)
            pattern = f"{PREFIX}{part}:{'<digest>' if blob else _id_pattern(ident, names)}"
            if part == RECORD:
                pattern += f" (status {decode(db.hget(key, 's'))})"
        elif rest in redis_keys._GLOBAL.values():
            pattern = f"{PREFIX}{rest} (global, not expected to stay)"
        else:
            pattern = f"{PREFIX}{rest} (not in girder.backends.redis_keys)"
        report.leaked.setdefault(pattern, []).append(_describe_key(db, key, kind))
        report.leaked_bytes += int(db.memory_usage(key) or 0)
    return report


# -- the nodes' logs -------------------------------------------------------------------------------


_FAILED = re.compile(r"event='request failed'.*? error=(['\"])(.*?)\1")


def grid_failures(logs: Path) -> Counter[str]:
    """Why requests failed, from the nodes' `request failed` lines (no chaos function fails by
    itself: each one is the grid's doing). The root cause, without the request that raised it."""
    causes: Counter[str] = Counter()
    for path in logs.glob("*.log"):
        for match in _FAILED.finditer(path.read_text(errors="replace")):
            cause = match.group(2).rpartition("at the bottom: ")[2]
            causes[cause.partition("): ")[2] or cause] += 1
    return causes


def unhandled_exceptions(logs: Path) -> Counter[str]:
    """Exceptions that escaped a task or a process (asyncio's "never retrieved" reports and
    bare tracebacks), by what they say and where: the grid should handle or log them itself."""
    found: Counter[str] = Counter()
    for path in sorted(logs.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Task exception was never retrieved"):
                what = lines[index + 1] if index + 1 < len(lines) else ""
                found[_TASK_NAME.sub("Task", what)[:300]] += 1
            elif line.startswith("Traceback") and not _reported(lines, index):
                last = next((x for x in lines[index + 1 :] if not x.startswith(" ")), "")
                found[f"{path.stem.rstrip('0123456789')}: {last[:300]}"] += 1
    return found


_TASK_NAME = re.compile(r"Task finished name='Task-\d+'")


def _reported(lines: list[str], index: int) -> bool:
    """Whether the traceback at `index` belongs to an exception already counted above."""
    return index >= 2 and (
        "direct cause" in lines[index - 2]
        or "during handling" in lines[index - 2]
        or "Task exception" in lines[index - 2]
    )


def drop_cache_and_measure(db: redis.Redis, servers: list[redis.Redis]) -> tuple[int, int]:
    """Delete what is left of the grid (once checked), its blobs and moved results on every
    server too; used_memory and the part of it that is Lua scripts after that, summed over the
    servers."""
    keys = list(scan_grid(db))
    for start in range(0, len(keys), 1000):
        db.unlink(*keys[start : start + 1000])
    for server in servers:
        patterns = (KEYS.blob_pattern(), KEYS.result_pattern(), KEYS.own_record_pattern())
        for pattern in (*patterns, KEYS.own_step_pattern()):
            for name in list(server.scan_iter(match=pattern, count=1000)):
                server.unlink(name)
    memory = [server.info("memory") for server in servers]
    return (
        sum(int(m["used_memory"]) for m in memory),
        sum(int(m.get("used_memory_scripts", 0)) for m in memory),
    )


def overlap_text(overlap: Overlap, timeline: Timeline) -> str:
    first, second = overlap.first, overlap.second
    end = "never ended" if first.end is None else f"ended {timeline.rel(first.end)} {first.how}"
    before = "; ".join(
        f"{timeline.rel(e.t)} {e.kind} {e.detail}" for e in timeline.before(second.start)
    )
    return (
        f"key {first.key} ran twice at once: on {first.node} (pid {first.pid}) from "
        f"{timeline.rel(first.start)}, {end}; on {second.node} (pid {second.pid}) from "
        f"{timeline.rel(second.start)}. Before that: {before}"
    )
