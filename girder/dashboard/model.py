"""The dashboard's picture of a grid, folded from grid events (`StateBackend.events`) and from
periodic samples of the nodes and their work lists, and of the servers that hold the grid.

Nothing here talks to the backend: `GridModel.fold` takes events, `GridModel.sample` takes what
`nodes` reported, `GridModel.sample_servers` what `servers` did, and the rest reads the state out as
plain data (JSON for the page, numbers for `/metrics`). Memory is bounded: the model keeps at most
`max_requests` requests (the oldest finished ones go first), `history` samples of each time series
and `max_failures` failures.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from girder.backends.base import Event, EventKind, NodeInfo, ServerLoad

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histogram buckets (`/metrics`)."""

GRAPH_LIMIT = 150
"""A job's call graph with more requests than this is shown collapsed by function."""


@dataclass(slots=True)
class NodeState:
    """One node as the events and samples tell it."""

    kind: str = "?"
    pool: str = ""
    alive: bool = True
    work: int = 0
    running: int = 0
    ran: int = 0  # requests it completed, failed ones included
    failed: int = 0
    cache_hits: int = 0
    shared: int = 0
    stolen: int = 0


@dataclass(slots=True)
class RequestState:
    """One request key: its function, where it ran, and when."""

    name: str = "?"
    status: str = "pending"  # pending, running, done, failed, cancelled
    node: str = ""  # the node that ran it
    submitted_by: str = ""
    submitted: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    how: str = "new"  # as first submitted: new, shared or cached
    shared: bool = False  # asked for again while it was pending or running
    cached: bool = False  # asked for again once done (served from the cache)
    children: list[str] = field(default_factory=list)
    askers: set[str] = field(default_factory=set)  # parent keys, jobs or nodes that asked


@dataclass(slots=True)
class Failure:
    """A failed request and its error chain."""

    time: float
    key: str
    name: str
    node: str
    chain: str


@dataclass(slots=True)
class Second:
    """What finished in one second of the grid's clock."""

    finished: int = 0
    failed: int = 0
    latency_sum: float = 0.0


class GridModel:
    """The grid's nodes, requests, jobs, failures and time series, folded from events."""

    def __init__(
        self, *, max_requests: int = 50_000, history: int = 300, max_failures: int = 100
    ) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.requests: dict[str, RequestState] = {}
        self.jobs: dict[str, list[str]] = {}  # job -> its top-level keys
        self.job_started: dict[str, float] = {}
        self.failures: deque[Failure] = deque(maxlen=max_failures)
        self.seconds: dict[int, Second] = {}
        self.depths: deque[tuple[float, dict[str, int]]] = deque(maxlen=history)
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (function, outcome) -> count
        self.latency: dict[str, list[float]] = {}  # function -> bucket counts (+ sum, count)
        self.servers: list[ServerLoad] = []
        self.server_cpu: dict[str, float] = {}
        """Each server's share of one core over the last two samples (0.5: half a core)."""
        self._server_sampled: dict[str, tuple[float, float]] = {}  # address -> (time, cpu s)
        self.events_seen = 0
        self.last_event = ""
        self._max_requests = max_requests
        self._history = history

    # -- folding ----------------------------------------------------------------------------------

    def fold(self, events: Iterable[Event]) -> None:
        """Apply events, oldest first."""
        for event in events:
            self.events_seen += 1
            self.last_event = event.id
            handler = _HANDLERS.get(event.kind)
            if handler is not None:
                handler(self, event)
        self._forget_old_requests()

    def sample(self, nodes: Iterable[NodeInfo], now: float | None = None) -> None:
        """Record the nodes' liveness and work-list lengths (a sample of the depth series)."""
        now = time.time() if now is None else now
        depths: dict[str, int] = {}
        seen = set()
        for info in nodes:
            state = self._node(info.node)
            state.kind, state.pool = info.kind.value, info.distributor or ""
            state.alive, state.work, state.running = info.alive, info.work, info.running
            depths[info.node] = info.work
            seen.add(info.node)
        for name, state in self.nodes.items():
            if name not in seen:
                state.alive, state.work, state.running = False, 0, 0
        self.depths.append((now, depths))

    def sample_servers(self, loads: Iterable[ServerLoad], now: float | None = None) -> None:
        """Record the servers' figures, and the CPU each used since its previous sample."""
        now = time.time() if now is None else now
        self.servers = sorted(loads, key=lambda load: load.address)
        cpu: dict[str, float] = {}
        for load in self.servers:
            before = self._server_sampled.get(load.address)
            if before is not None and now > before[0] and load.cpu_seconds >= before[1]:
                cpu[load.address] = (load.cpu_seconds - before[1]) / (now - before[0])
            self._server_sampled[load.address] = (now, load.cpu_seconds)
        self.server_cpu = cpu
        known = {load.address for load in self.servers}
        self._server_sampled = {a: v for a, v in self._server_sampled.items() if a in known}

    def _node(self, name: str) -> NodeState:
        state = self.nodes.get(name)
        if state is None:
            state = self.nodes[name] = NodeState()
        return state

    def _request(self, key: str) -> RequestState:
        state = self.requests.get(key)
        if state is None:
            state = self.requests[key] = RequestState()
        return state

    def _submitted(self, event: Event) -> None:
        known = event.key in self.requests
        request = self._request(event.key)
        if event.name:
            request.name = event.name
        asker = self._node(event.node)
        who = event.parent or event.job or event.node
        if who in request.askers:
            return  # asked again by the same parent or job (a resubmission): nothing new
        request.askers.add(who)
        if event.detail == "cached":
            asker.cache_hits += 1
            request.cached = True
            if not known:
                request.status, request.how = "done", "cached"
            self.outcomes[request.name, "cached"] += 1
        elif event.detail == "shared":
            asker.shared += 1
            request.shared = True
            if not known:
                request.how = "shared"
        if not known:
            request.submitted, request.submitted_by = event.time, event.node
        if event.parent:
            parent = self._request(event.parent)
            if event.key not in parent.children:
                parent.children.append(event.key)
        elif event.job:
            roots = self.jobs.setdefault(event.job, [])
            self.job_started.setdefault(event.job, event.time)
            if event.key not in roots:
                roots.append(event.key)

    def _claimed(self, event: Event) -> None:
        request = self._request(event.key)
        request.status, request.node, request.started = "running", event.node, event.time

    def _ended(self, event: Event) -> None:
        request = self._request(event.key)
        failed = event.kind == EventKind.FAILED
        request.status = "failed" if failed else "done"
        request.ended = event.time
        node = self._node(event.node)
        node.ran += 1
        second = self.seconds.setdefault(int(event.time), Second())
        if failed:
            node.failed += 1
            second.failed += 1
            self.failures.append(
                Failure(event.time, event.key, request.name, event.node, event.detail)
            )
        else:
            second.finished += 1
        self.outcomes[request.name, "failed" if failed else "finished"] += 1
        if request.started:
            seconds = max(0.0, event.time - request.started)
            second.latency_sum += seconds
            self._observe(request.name, seconds)
        self._forget_old_seconds()

    def _observe(self, function: str, seconds: float) -> None:
        counts = self.latency.get(function)
        if counts is None:
            counts = self.latency[function] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        counts[-2] += seconds
        counts[-1] += 1

    def _cancelled(self, event: Event) -> None:
        request = self._request(event.key)
        request.status, request.ended = "cancelled", event.time
        self.outcomes[request.name, "cancelled"] += 1

    def _stolen(self, event: Event) -> None:
        if event.parent and event.detail.isdigit():
            self._node(event.parent).stolen += int(event.detail)

    def _joined(self, event: Event) -> None:
        node = self._node(event.node)
        node.kind, node.pool, node.alive = event.detail or node.kind, event.parent, True

    def _left(self, event: Event) -> None:
        self._node(event.node).alive = False

    def _forget_old_requests(self) -> None:
        excess = len(self.requests) - self._max_requests
        if excess <= 0:
            return
        for key in [
            k for k, r in self.requests.items() if r.status in ("done", "failed", "cancelled")
        ][:excess]:
            del self.requests[key]

    def _forget_old_seconds(self) -> None:
        if len(self.seconds) > self._history:
            for second in sorted(self.seconds)[: len(self.seconds) - self._history]:
                del self.seconds[second]

    # -- reading ----------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything the page shows but a job's graph, as JSON-able data."""
        now = time.time() if now is None else now
        return {
            "time": now,
            "events": self.events_seen,
            "nodes": [
                {"node": name, **_fields(state)} for name, state in sorted(self.nodes.items())
            ],
            "active": self._active(now),
            "series": self._series(now),
            "depths": [{"time": t, "depths": d} for t, d in self.depths],
            "failures": [_fields(f) for f in reversed(self.failures)],
            "jobs": self._jobs(),
            "servers": [
                {**_fields(load), "cpu": self.server_cpu.get(load.address)} for load in self.servers
            ],
        }

    def _active(self, now: float, limit: int = 200) -> list[dict[str, Any]]:
        """Running and parked requests (a parked one runs and waits for its children)."""
        rows = []
        for key, request in self.requests.items():
            if request.status != "running":
                continue
            waiting = any(
                self.requests[c].status in ("pending", "running")
                for c in request.children
                if c in self.requests
            )
            rows.append(
                {
                    "key": key,
                    "name": request.name,
                    "node": request.node,
                    "state": "parked" if waiting else "running",
                    "seconds": round(max(0.0, now - request.started), 3),
                }
            )
        rows.sort(key=lambda row: -float(row["seconds"]))
        return rows[:limit]

    def _series(self, now: float, span: int = 120) -> list[dict[str, Any]]:
        """Per second over the last `span` seconds: finished, failed, mean latency (ms)."""
        rows: list[dict[str, Any]] = []
        for second in range(int(now) - span, int(now) + 1):
            found = self.seconds.get(second)
            if found is None:
                rows.append({"time": second, "finished": 0, "failed": 0, "latency_ms": None})
                continue
            count = found.finished + found.failed
            mean = 1000 * found.latency_sum / count if count else None
            rows.append(
                {
                    "time": second,
                    "finished": found.finished,
                    "failed": found.failed,
                    "latency_ms": mean,
                }
            )
        return rows

    def _jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        newest = sorted(self.jobs, key=lambda job: -self.job_started.get(job, 0.0))[:limit]
        return [
            {
                "job": job,
                "started": self.job_started.get(job, 0.0),
                "roots": [self.requests[k].name for k in self.jobs[job] if k in self.requests],
            }
            for job in newest
        ]

    def graph(self, job: str, limit: int = GRAPH_LIMIT) -> dict[str, Any]:
        """The call graph of `job` as it stands: its requests (with their function, status,
        node and how they were served) and "waits on" edges. With more than `limit` requests,
        collapsed: one node per function, edges between functions, with counts."""
        keys = self._reachable(self.jobs.get(job, []))
        if len(keys) > limit:
            return self._collapsed(job, keys)
        nodes = []
        for key in keys:
            request = self.requests[key]
            parent_nodes = {self.requests[p].node for p in self._parents(key, keys)}
            nodes.append(
                {
                    "id": key,
                    "name": request.name,
                    "status": request.status,
                    "node": request.node,
                    "cached": request.how == "cached" or request.cached,
                    "shared": request.how == "shared" or request.shared,
                    "remote": bool(
                        request.node and parent_nodes and request.node not in parent_nodes
                    ),
                }
            )
        edges = [
            {"source": key, "target": child}
            for key in keys
            for child in self.requests[key].children
            if child in self.requests
        ]
        return {"job": job, "collapsed": False, "nodes": nodes, "edges": edges}

    def _reachable(self, roots: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        stack = [k for k in reversed(roots) if k in self.requests]
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen[key] = None
            stack.extend(c for c in reversed(self.requests[key].children) if c in self.requests)
        return list(seen)

    def _parents(self, key: str, keys: list[str]) -> list[str]:
        return [k for k in keys if key in self.requests[k].children]

    def _collapsed(self, job: str, keys: list[str]) -> dict[str, Any]:
        counts: dict[str, Counter[str]] = {}
        edges: Counter[tuple[str, str]] = Counter()
        for key in keys:
            request = self.requests[key]
            counts.setdefault(request.name, Counter())[request.status] += 1
            for child in request.children:
                if child in self.requests:
                    edges[request.name, self.requests[child].name] += 1
        nodes = [
            {
                "id": name,
                "name": name,
                "count": sum(status.values()),
                "status": _overall(status),
                "statuses": dict(status),
            }
            for name, status in counts.items()
        ]
        links = [{"source": a, "target": b, "count": n} for (a, b), n in edges.items()]
        return {"job": job, "collapsed": True, "nodes": nodes, "edges": links}


def _overall(statuses: Counter[str]) -> str:
    for status in ("failed", "running", "pending"):
        if statuses.get(status):
            return status
    return "done"


def _fields(value: Any) -> dict[str, Any]:
    return {
        name: getattr(value, name) for name in value.__slots__ if name not in ("children", "askers")
    }


_HANDLERS = {
    EventKind.SUBMITTED: GridModel._submitted,
    EventKind.CLAIMED: GridModel._claimed,
    EventKind.FINISHED: GridModel._ended,
    EventKind.FAILED: GridModel._ended,
    EventKind.CANCELLED: GridModel._cancelled,
    EventKind.STOLEN: GridModel._stolen,
    EventKind.JOINED: GridModel._joined,
    EventKind.LEFT: GridModel._left,
}
