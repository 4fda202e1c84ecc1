"""The chaos harness of tests/test_chaos.py: a seeded schedule of faults against a Redis grid of
real processes under nested load, and checks of the grid's invariants over the whole run.

A run starts Redis (with an append-only file, so a restart keeps the data), a distributor,
workers and client processes (`chaos_client.py`) through the `girder` command, all talking to
Redis through the fault proxy when there is one. The clients run nested jobs (`salted_tree`,
`salted_fib`, `salted_chain` from gridfns; some keys shared between clients, some fresh) while
the schedule kills, stops and restarts things. Then the faults stop, the grid gets a quiet period
in which everything must finish, the nodes stop, and the checks look at the clients' answers, at
the run log every grid function wrote (start/end of each run, per process) and at what is left in
Redis (`chaos_checks`). Everything the processes wrote stays under the test's tmp dir.

Reproduce a run with GIRDER_CHAOS_SEED=<seed> (and GIRDER_CHAOS_SECONDS=<length>): the schedule
and the clients' plans depend on the seed alone (the processes' timing does not).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis
from chaos_checks import (
    KEYS,
    LEASE,
    PREFIX,
    SHARDED,
    AnswerReport,
    LeakReport,
    Overlap,
    Run,
    Timeline,
    check_answers,
    check_leaks,
    decode,
    drop_cache_and_measure,
    find_overlaps,
    grid_failures,
    overlap_text,
    read_runs,
    record_server,
    record_states,
    reruns,
    unhandled_exceptions,
)
from chaos_client import read_events
from gridfns import RUN_LOG_ENV, blobs_answer
from processes import TESTS, GridProcesses, nodes, signal_group, wait_for_nodes, wait_until

from girder.backends import open_backend
from girder.backends.redis_keys import F_OWN_WAITER, F_WAITER
from girder.testing.redis_server import RedisServer
from girder.testing.tethered import tethered_popen

try:
    from girder.testing.proxy import FaultProxy
except ImportError:  # a checkout without the fault proxy: process faults only
    FaultProxy = None

SEED_ENV = "GIRDER_CHAOS_SEED"
SECONDS_ENV = "GIRDER_CHAOS_SECONDS"
NOTES_ENV = "GIRDER_CHAOS_SPREAD_NOTIFICATIONS"
LONG_ENV = "GIRDER_CHAOS_LONG"
PROXY_ENV = "GIRDER_CHAOS_PROXY"
"""Set to 0 to run without the fault proxy even where it exists."""
FAULTS_ENV = "GIRDER_CHAOS_FAULTS"
"""Comma-separated fault kinds to draw from (default: all), to corner one kind of defect."""

DEFAULT_SEED = 367
"""A seed whose 35 s schedule (with the proxy) has 13 of the 14 fault kinds (no stop_client)."""
WARM_UP = 2.0
"""Seconds of load before the first fault."""
LARGE_VALUE_BYTES = 2048
"""GIRDER_LARGE_VALUE_BYTES of a cluster run: the values of `salted_blobs` are blobs."""


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run."""

    seed: int = DEFAULT_SEED
    seconds: float = 35.0
    workers: int = 3
    clients: int = 3
    concurrency: int = 2
    """Jobs each client has in flight."""
    quiet_timeout: float = 60.0
    """After the last fault, everything must finish within this many seconds."""
    proxy: bool = True
    """Put the fault proxy between the nodes and Redis (when `girder.testing.proxy` exists)."""
    faults: tuple[str, ...] = ()
    """Fault kinds to draw from; empty: every kind available."""
    pool: str = "pool"
    secret: str = "chaos-test-secret"
    cluster: bool = False
    """On a Redis Cluster (chaos_cluster.py): failovers instead of the faults of one server,
    no proxy, and jobs whose values are blobs (spread over the primaries)."""
    spread_results: bool = os.environ.get("GIRDER_SPREAD_RESULTS", "") not in ("", "0", "false")
    """Every process moves cached results to their keys' own slots (`spread_results`)."""
    spread_notifications: str = os.environ.get(NOTES_ENV, "")
    """Whose nodes keep their notifications in their own slots (`spread_notifications`): ''
    or '0' nobody's, 'mixed' every client's and every other worker's (w1, w3, ...), anything
    else every process's. (Not GIRDER_SPREAD_NOTIFICATIONS: the test's own process reads that
    one, as a boolean.)"""

    @classmethod
    def from_env(
        cls, default_seconds: float, *, cluster: bool = False, default_seed: int = DEFAULT_SEED
    ) -> ChaosConfig:
        """Seed and length from GIRDER_CHAOS_SEED / GIRDER_CHAOS_SECONDS."""
        return cls(
            seed=int(os.environ.get(SEED_ENV, default_seed)),
            seconds=float(os.environ.get(SECONDS_ENV, default_seconds)),
            proxy=os.environ.get(PROXY_ENV, "1") != "0",
            faults=tuple(k for k in os.environ.get(FAULTS_ENV, "").split(",") if k),
            cluster=cluster,
        )

    @property
    def use_proxy(self) -> bool:
        return self.proxy and not self.cluster and FaultProxy is not None


# -- the schedule ----------------------------------------------------------------------------------

PROCESS_FAULTS = {
    "kill_worker": 3,
    "stop_worker": 2,
    "kill_client": 2,
    "stop_client": 1,
    "kill_distributor": 1,
    "stop_distributor": 1,
    "restart_redis": 1,
    "pause_redis": 1,
    "wipe_redis": 1,
}
PROXY_FAULTS = {
    "drop_reply": 1,
    "cut_connection": 1,
    "delay_replies": 1,
    "proxy_chaos": 1,
    "proxy_outage": 1,
}
SERVER_FAULTS = ("restart_redis", "pause_redis", "wipe_redis")
"""Faults of one Redis server: a cluster run draws `CLUSTER_FAULTS` instead."""
CLUSTER_FAULTS = {
    "fail_over_grid": 0.5,
    "fail_over_blobs": 0.5,
    "lose_writes_grid": 0.5,
    "lose_writes_blobs": 0.5,
    "move_slot_grid": 0.5,
}
"""A primary killed (kill -9) and replaced by its replica, then healed (it comes back as a
replica): the grid's primary, or another (only blobs live there); `lose_writes_*` stalls its
replication first, so the writes it acknowledges meanwhile are lost. `move_slot_grid` moves
the grid's slot to another primary (a resharding), 100 to 1,000 keys per MIGRATE (the grid waits
for the move: the more keys per MIGRATE, the sooner it is over). One runs at a time, and
takes about 10 s: at these weights (about one fault in six) they seldom queue up behind each
other (at twice as much, a 300 s run went on to 556 s to get through them)."""


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: `at` seconds after the start of the chaos."""

    at: float
    kind: str
    pick: int
    """Which target, modulo the candidates at that moment."""
    length: float = 0.0
    """Seconds: of a stop, a downtime, a window of delays; the count of dropped replies."""
    amount: float = 0.0
    """Seconds of delay per reply (delay_replies)."""

    def describe(self) -> str:
        extra = {
            "stop_worker": f" for {self.length:.2f}s (lease {LEASE}s)",
            "stop_client": f" for {self.length:.2f}s (lease {LEASE}s)",
            "stop_distributor": f" for {self.length:.2f}s (lease {LEASE}s)",
            "pause_redis": f" for {self.length:.2f}s (lease {LEASE}s)",
            "wipe_redis": f", down {self.length:.2f}s, back empty",
            "kill_distributor": f", restart after {self.length:.2f}s",
            "kill_client": f", replacement after {self.length:.2f}s",
            "restart_redis": f", down {self.length:.2f}s",
            "drop_reply": f" x{int(self.length)}",
            "delay_replies": f" by {self.amount:.2f}s for {self.length:.2f}s",
            "proxy_chaos": f" for {self.length:.2f}s",
            "proxy_outage": f" for {self.length:.2f}s",
            "fail_over_grid": f", heal after {self.length:.2f}s",
            "fail_over_blobs": f", heal after {self.length:.2f}s",
            "lose_writes_grid": f" {self.amount:.2f}s, fail over, heal after {self.length:.2f}s",
            "lose_writes_blobs": f" {self.amount:.2f}s, fail over, heal after {self.length:.2f}s",
            "move_slot_grid": f", {int(self.amount)} keys per MIGRATE, {self.length:.3f}s apart",
        }.get(self.kind, "")
        return f"t+{self.at:6.2f}s {self.kind} #{self.pick}{extra}"


def _fault_lengths(kind: str, rng: random.Random) -> tuple[float, float]:
    if kind == "stop_worker":
        return rng.uniform(1.3, 2.5) * LEASE, 0.0
    if kind in ("stop_client", "stop_distributor"):
        return rng.uniform(0.5, 2.5) * LEASE, 0.0
    if kind == "pause_redis":
        return rng.uniform(0.3, 2.0) * LEASE, 0.0
    if kind == "wipe_redis":
        return rng.uniform(0.0, 0.5), 0.0
    if kind == "kill_distributor":
        return rng.uniform(0.2, 2.0), 0.0
    if kind == "kill_client":
        return rng.uniform(0.0, 1.0), 0.0
    if kind == "restart_redis":
        return rng.uniform(0.0, 0.5), 0.0
    if kind == "drop_reply":
        return float(rng.randint(1, 3)), 0.0
    if kind == "delay_replies":
        return rng.uniform(1.0, 3.0), rng.uniform(0.05, LEASE)
    if kind == "proxy_chaos":
        return rng.uniform(1.0, 3.0), 0.0
    if kind == "proxy_outage":
        return rng.uniform(0.1, 0.5), 0.0
    if kind.startswith("fail_over"):
        return rng.uniform(0.5, 3.0), 0.0
    if kind.startswith("lose_writes"):
        return rng.uniform(0.5, 3.0), rng.uniform(0.3, 1.5)
    if kind == "move_slot_grid":
        return rng.uniform(0.0, 0.005), float(rng.choice((100, 300, 1000)))
    return 0.0, 0.0


def fault_weights(*, proxy: bool, cluster: bool) -> dict[str, float]:
    """The kinds of fault a run draws from, and their weights."""
    if cluster:
        nodes = {k: w for k, w in PROCESS_FAULTS.items() if k not in SERVER_FAULTS}
        return nodes | CLUSTER_FAULTS
    return {**PROCESS_FAULTS, **(PROXY_FAULTS if proxy else {})}


def make_schedule(
    seed: int, seconds: float, *, proxy: bool, cluster: bool = False, only: tuple[str, ...] = ()
) -> list[Fault]:
    """The faults of a run: one every 1 to 3 seconds after the warm-up, drawn from `seed`
    (among the kinds `only`, when given)."""
    rng = random.Random(seed)
    weights = fault_weights(proxy=proxy, cluster=cluster)
    if only:
        unknown = set(only) - set(PROCESS_FAULTS) - set(PROXY_FAULTS) - set(CLUSTER_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        weights = {kind: weight for kind, weight in weights.items() if kind in only}
    if not weights:
        return []
    kinds, chances = list(weights), list(weights.values())
    faults = []
    at = WARM_UP
    while True:
        at += rng.uniform(1.0, 3.0)
        if at > seconds:
            return faults
        kind = rng.choices(kinds, chances)[0]
        length, amount = _fault_lengths(kind, rng)
        faults.append(Fault(round(at, 2), kind, rng.randrange(1000), round(length, 2), amount))


# -- the load --------------------------------------------------------------------------------------

SHARED_SALTS = ("shared-0", "shared-1", "shared-2")


@dataclass(frozen=True)
class Job:
    """One top-level call a client makes, and its right answer."""

    id: str
    fn: str
    args: tuple[Any, ...]
    expected: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "fn": self.fn, "args": list(self.args)}


def fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


BLOB_PAD = 2100
"""Characters of the large argument of a `salted_blobs` job (a blob at 2048 bytes)."""


def _job(rng: random.Random, job_id: str, salt: str, blobs: bool) -> Job:
    kind = rng.choice(("tree", "tree", "fib", "chain", *(("blobs",) if blobs else ())))
    if kind == "blobs":
        width, depth = rng.randint(1, 4), rng.randint(0, 4)
        pad = salt[:1] * BLOB_PAD
        return Job(
            job_id, "salted_blobs", (width, depth, salt, pad), blobs_answer(width, depth, salt, pad)
        )
    if kind == "tree":
        depth = rng.randint(3, 6)
        return Job(job_id, "salted_tree", (depth, 0, salt, 20), 2 ** (depth + 1) - 1)
    if kind == "fib":
        n = rng.randint(10, 60)
        return Job(job_id, "salted_fib", (n, salt), fibonacci(n))
    n = rng.randint(5, 40)
    return Job(job_id, "salted_chain", (n, salt, 100), n)


def make_plan(seed: int, slot: int, count: int = 400, *, blobs: bool = False) -> list[Job]:
    """Client `slot`'s jobs: half on keys shared by every client, half on fresh keys; with
    `blobs`, a fifth of them pass large values around (`salted_blobs`)."""
    rng = random.Random(f"{seed}:client:{slot}")
    jobs = []
    for index in range(count):
        shared = rng.random() < 0.5
        salt = rng.choice(SHARED_SALTS) if shared else f"{seed}-c{slot}-{index}"
        jobs.append(_job(rng, f"c{slot}-{index}", salt, blobs))
    return jobs


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class ClientSlot:
    """One client of the load; a killed client is replaced by a new incarnation."""

    slot: int
    plan: Path
    answers: Path
    stop: Path
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0

    def files(self) -> tuple[Path, Path, Path]:
        """The client's arguments: plan, answers, stop file."""
        return self.plan, self.answers, self.stop


Handler = Callable[[Fault], Awaitable[bool]]
"""Injects a fault; False when it had no target."""


class ChaosRun(ABC):
    """Runs the grid, the load and the faults; keeps what the checks need. The Redis under
    the grid, and its faults, are a subclass's: `ServerChaosRun` (one server, here) or
    `ClusterChaosRun` (chaos_cluster.py)."""

    def __init__(self, config: ChaosConfig, tmp: Path, url: str, proxy: Any = None) -> None:
        """`url`: the grid's Redis, as the harness reaches it; the nodes go through `proxy`
        (a started `FaultProxy`) when there is one."""
        self.config = config
        self.url = url
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.run_logs = tmp / "runs"
        self.client_dir = tmp / "clients"
        for folder in (self.logs, self.run_logs, self.client_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.proxy = proxy
        self.node_url = self.proxy.url if self.proxy is not None else url
        self.timeline = Timeline()
        self.procs = GridProcesses(self.node_url, self.logs, **self._env())
        self.distributor: subprocess.Popen[bytes] | None = None
        self.distributor_started = 0.0
        """When the distributor process was last started (`time.monotonic`)."""
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: dict[int, tuple[subprocess.Popen[bytes], str, float]] = {}
        """pid -> (process, what it is, when it was stopped), while SIGSTOPped."""
        self.worker_count = 0
        # More than the clients get through (a cluster's failovers go on past `seconds`, and
        # its jobs are quicker: they ran out after 21 of 50 s at 10 a second).
        count = 100 + int(config.seconds * (40 if config.cluster else 10))
        self.plans = {
            s: make_plan(config.seed, s, count, blobs=config.cluster) for s in range(config.clients)
        }
        self.clients = {s: self._slot(s) for s in range(config.clients)}
        self._client_logs: list[BinaryIO] = []
        self._pending: list[asyncio.Task[None]] = []
        self.proxy_counts: dict[str, int] = {}
        self.names: dict[str, str] = {config.pool: "distributor"}
        """Node id -> what it is, for the leak report."""

    # -- the Redis under the grid (a subclass's) --------------------------------------------------

    @property
    @abstractmethod
    def fsync(self) -> str:
        """Redis's appendfsync ("off": a restart loses everything)."""

    @abstractmethod
    def describe_redis(self) -> str:
        """What the grid runs on, for the header."""

    @abstractmethod
    def redis_faults(self) -> dict[str, Handler]:
        """The handlers of the faults of Redis."""

    @abstractmethod
    async def calm_redis(self) -> None:
        """End the faults of Redis: it serves the grid again, whole."""

    @abstractmethod
    def release_redis(self) -> None:
        """At the end: let go of what the faults of Redis hold (a paused server)."""

    @abstractmethod
    def db(self) -> redis.Redis:
        """A redis-py client of the server of the grid's slot (never through the proxy)."""

    @abstractmethod
    def servers(self) -> list[redis.Redis]:
        """A redis-py client of every server the grid's keys may live on (blobs included)."""

    def schedule(self) -> list[Fault]:
        config = self.config
        return make_schedule(
            config.seed,
            config.seconds,
            proxy=self.proxy is not None,
            cluster=config.cluster,
            only=config.faults,
        )

    @property
    def _notes_off(self) -> bool:
        return self.config.spread_notifications in ("", "0", "false")

    def _env(self) -> dict[str, str]:
        blobs = {"GIRDER_LARGE_VALUE_BYTES": str(LARGE_VALUE_BYTES)} if self.config.cluster else {}
        return {
            "GIRDER_SECRET": self.config.secret,
            "GIRDER_BACKEND": self.node_url,
            "GIRDER_POOL": self.config.pool,
            "GIRDER_LOG_LEVEL": "INFO",
            RUN_LOG_ENV: str(self.run_logs),
            "GIRDER_SPREAD_RESULTS": "1" if self.config.spread_results else "0",
            "GIRDER_SPREAD_NOTIFICATIONS": "0" if self._notes_off else "1",
            **blobs,
        }

    def _slot(self, slot: int) -> ClientSlot:
        plan = self.client_dir / f"plan-{slot}.json"
        jobs = [job.to_json() for job in self.plans[slot]]
        plan.write_text(json.dumps({"concurrency": self.config.concurrency, "jobs": jobs}))
        return ClientSlot(
            slot, plan, self.client_dir / f"answers-{slot}.jsonl", self.client_dir / f"stop-{slot}"
        )

    # -- processes ---------------------------------------------------------------------------------

    def start_distributor(self) -> None:
        self.distributor = self.procs.distributor(self.config.pool)
        self.distributor_started = time.monotonic()
        self.timeline.add("start_distributor", self.config.pool, self.distributor.pid)

    def start_worker(self) -> None:
        self.worker_count += 1
        name = f"w{self.worker_count}"
        odd = self.worker_count % 2 == 1
        mixed = self.config.spread_notifications == "mixed"
        env = {"GIRDER_SPREAD_NOTIFICATIONS": "1" if odd else "0"} if mixed else None
        proc = self.procs.worker(name, self.config.pool, env=env)
        self.workers[name] = proc
        self.timeline.add("start_worker", name, proc.pid)

    def start_client(self, slot: ClientSlot) -> None:
        slot.incarnation += 1
        log = (self.logs / f"client-{slot.slot}-{slot.incarnation}.log").open("ab")
        self._client_logs.append(log)
        slot.proc = tethered_popen(
            [sys.executable, str(TESTS / "chaos_client.py"), *map(str, slot.files())],
            env=self.procs.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like the nodes
        )
        self.timeline.add("start_client", f"slot {slot.slot} #{slot.incarnation}", slot.proc.pid)

    def live_workers(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """Running workers that are not stopped, by name."""
        return [
            (name, proc)
            for name, proc in sorted(self.workers.items())
            if proc.poll() is None and proc.pid not in self.stopped
        ]

    def live_clients(self) -> list[ClientSlot]:
        """Running clients that are not stopped."""
        return [
            s
            for s in self.clients.values()
            if s.proc is not None and s.proc.poll() is None and s.proc.pid not in self.stopped
        ]

    def running_clients(self) -> list[ClientSlot]:
        """Clients whose process has not ended (stopped or not)."""
        return [s for s in self.clients.values() if s.proc is not None and s.proc.poll() is None]

    def kill9(self, proc: subprocess.Popen[bytes], what: str) -> None:
        self.procs.kill9(proc)
        self.timeline.killed[proc.pid] = self.timeline.add("kill -9", what, proc.pid).t

    def sigstop(self, proc: subprocess.Popen[bytes], what: str, seconds: float) -> None:
        """SIGSTOP `proc` (its process group) now, SIGCONT it `seconds` later."""
        signal_group(proc, signal.SIGSTOP)
        self.stopped[proc.pid] = (proc, what, self.timeline.add("SIGSTOP", what, proc.pid).t)
        self.later(seconds, lambda: self.cont(proc.pid))

    def cont(self, pid: int) -> None:
        """SIGCONT a process this run stopped (if it is still stopped and alive)."""
        found = self.stopped.pop(pid, None)
        if found is None:
            return
        proc, what, stopped_at = found
        if proc.poll() is not None:
            return
        # The process may run (and log a run) before `signal_group` returns: it woke when the
        # signal went out, so that is the moment the checks compare its runs against.
        sent = time.monotonic()
        signal_group(proc, signal.SIGCONT)
        woke = self.timeline.add("SIGCONT", what, proc.pid, at=sent).t
        self.timeline.stops.append((proc.pid, stopped_at, woke))

    def cont_all(self) -> None:
        for pid in list(self.stopped):
            self.cont(pid)

    async def start(self) -> None:
        """Distributor, workers, then the clients once the nodes are up."""
        self.start_distributor()
        for _ in range(self.config.workers):
            self.start_worker()
        await wait_for_nodes(self.url, workers=self.config.workers)
        for slot in self.clients.values():
            self.start_client(slot)

    # -- faults ------------------------------------------------------------------------------------

    def later(self, delay: float, action: Callable[[], None]) -> None:
        """Do `action` after `delay` seconds, while the schedule goes on."""

        async def wait_then_act() -> None:
            await asyncio.sleep(delay)
            action()

        self.meanwhile(wait_then_act())

    def meanwhile(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` while the schedule goes on (`calm` waits for it)."""
        self._pending.append(asyncio.create_task(work))

    async def inject(self, schedule: list[Fault]) -> None:
        """Apply the schedule in time; return when the chaos period is over."""
        begin = self.timeline.start = time.monotonic()
        self.timeline.add("chaos", f"{len(schedule)} faults over {self.config.seconds}s")
        for fault in schedule:
            await asyncio.sleep(max(0.0, begin + fault.at - time.monotonic()))
            applied = await self.apply(fault)
            (self.timeline.injected if applied else self.timeline.skipped)[fault.kind] += 1
        await asyncio.sleep(max(0.0, begin + self.config.seconds - time.monotonic()))

    async def apply(self, fault: Fault) -> bool:
        """Inject one fault; False when it had no target."""
        handler: dict[str, Handler] = {
            "kill_worker": self._kill_worker,
            "stop_worker": self._stop_worker,
            "kill_client": self._kill_client,
            "stop_client": self._stop_client,
            "kill_distributor": self._kill_distributor,
            "stop_distributor": self._stop_distributor,
            **self.redis_faults(),
        }
        return await handler[fault.kind](fault)

    async def _kill_worker(self, fault: Fault) -> bool:
        live = self.live_workers()
        if not live:
            return False
        name, proc = live[fault.pick % len(live)]
        self.kill9(proc, name)
        self.start_worker()
        return True

    async def _stop_worker(self, fault: Fault) -> bool:
        live = self.live_workers()
        if not live:
            return False
        name, proc = live[fault.pick % len(live)]
        self.sigstop(proc, name, fault.length)
        return True

    async def _stop_client(self, fault: Fault) -> bool:
        live = self.live_clients()
        if not live:
            return False
        slot = live[fault.pick % len(live)]
        assert slot.proc is not None
        self.sigstop(slot.proc, f"client slot {slot.slot}", fault.length)
        return True

    async def _stop_distributor(self, fault: Fault) -> bool:
        proc = self.distributor
        if proc is None or proc.poll() is not None or proc.pid in self.stopped:
            return False
        self.sigstop(proc, self.config.pool, fault.length)
        return True

    async def _kill_client(self, fault: Fault) -> bool:
        live = self.live_clients()
        if not live:
            return False
        slot = live[fault.pick % len(live)]
        assert slot.proc is not None
        self.kill9(slot.proc, f"client slot {slot.slot}")
        self.later(fault.length, lambda: self.start_client(slot))
        return True

    async def _kill_distributor(self, fault: Fault) -> bool:
        proc = self.distributor
        if proc is None or proc.poll() is not None or proc.pid in self.stopped:
            return False
        self.kill9(self.distributor, self.config.pool)
        self.later(fault.length, self.start_distributor)
        return True

    # -- the end -----------------------------------------------------------------------------------

    async def calm(self) -> None:
        """End the faults: pending restarts and SIGCONTs happen, the grid is whole again."""
        while self._pending:  # what they start meanwhile too
            pending = list(self._pending)
            self._pending.clear()
            await asyncio.gather(*pending)
        await self.calm_redis()
        self.cont_all()
        if self.distributor is None or self.distributor.poll() is not None:
            self.start_distributor()
        while len(self.live_workers()) < self.config.workers:
            self.start_worker()
        for slot in self.clients.values():
            if slot.proc is None or slot.proc.poll() is not None:
                self.start_client(slot)
        self.timeline.add("quiet", "faults over; clients asked to finish")
        for slot in self.clients.values():
            slot.stop.touch()

    async def finish(self) -> list[str]:
        """Wait (within the quiet timeout) for the clients, then for all work; the hangs."""
        deadline = time.monotonic() + self.config.quiet_timeout
        hangs = []
        try:
            await wait_until(
                self._clients_exited, timeout=self.config.quiet_timeout, what="clients to finish"
            )
        except TimeoutError:
            hangs.append("clients still running after the quiet timeout: " + self._hung_clients())
        for check, what in (
            (self._all_done, "every request to finish (orphans of killed clients included)"),
            (self._dead_reaped, "every dead node to be reaped"),
        ):
            try:
                await wait_until(check, timeout=max(1.0, deadline - time.monotonic()), what=what)
            except TimeoutError as exc:
                hangs.append(f"{exc}\n{await self.snapshot()}")
        self.timeline.add("idle", "hangs: " + str(len(hangs)))
        return hangs

    async def _clients_exited(self) -> bool:
        return not self.running_clients()

    async def _all_done(self) -> bool:
        db = self.db()
        try:
            return all(s == "d" for s, _, _ in record_states(db, self.servers()).values())
        finally:
            db.close()

    async def _dead_reaped(self) -> bool:
        """Every node the run killed is gone from the grid (its lease ran out and someone
        reaped it), and every node left is alive. A distributor started again under its own
        name counts once it has outlived the lease of the one killed before it: its name is
        alive then only if the new process renewed it (stopped any sooner, it may not have
        joined yet, and nobody would be left to reap the killed one's lease)."""
        if time.monotonic() - self.distributor_started < LEASE:
            return False
        found = await nodes(self.url)
        killed = self.killed_node_ids()
        return all(n.alive and n.node not in killed for n in found)

    def killed_node_ids(self) -> set[str]:
        """Ids of the workers and clients this run killed (a distributor comes back under its
        own name, so it is not one of them)."""
        killed = {n for n, p in self.workers.items() if p.pid in self.timeline.killed}
        for slot in self.clients.values():
            killed |= {
                e["node"]
                for e in read_events(slot.answers)
                if e["event"] == "hello" and e["pid"] in self.timeline.killed
            }
        return killed

    def _hung_clients(self) -> str:
        return ", ".join(
            f"slot {s.slot} pid {s.proc.pid}" for s in self.running_clients() if s.proc
        )

    async def snapshot(self) -> str:
        """The nodes and the unfinished requests, for a hang report. A request claimed by a
        live node that no process is running is marked STRANDED."""
        alive = {n.node for n in await nodes(self.url) if n.alive}
        lines = ["nodes (node kind distributor alive work running):"]
        lines += [
            f"  {n.node} {n.kind.value} {n.distributor} {n.alive} {n.work} {n.running}"
            for n in await nodes(self.url)
        ]
        running = {r.key for r in read_runs(self.run_logs, self.timeline.killed) if r.end is None}
        db, servers = self.db(), self.servers()
        record_at = record_server(servers)
        try:
            unfinished = {k: v for k, v in record_states(db, servers).items() if v[0] != "d"}
            lines.append(f"unfinished requests: {len(unfinished)} (key status owner crashes)")
            for key, (status, owner, crashes) in sorted(unfinished.items())[:30]:
                name = KEYS.own_record(key) if SHARDED else f"{PREFIX}r:{key}"
                fields = (decode(f) for f in (record_at(name) if SHARDED else db).hkeys(name))
                waiters = sorted(
                    f[len(F_WAITER) :] for f in fields if f.startswith((F_WAITER, F_OWN_WAITER))
                )
                stranded = status == "r" and owner in alive and key not in running
                note = " STRANDED: claimed by a live node, run by nobody" if stranded else ""
                lines.append(
                    f"  {key} {status} {owner or '-'} {crashes or 0} waiters {waiters}{note}"
                )
        finally:
            for client in (db, *servers):
                client.close()
        return "\n".join(lines)

    def stop(self) -> None:
        """SIGTERM everything (clients first), SIGCONT what is stopped; close the logs."""
        self.release_redis()
        self.cont_all()
        for slot in self.clients.values():
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
            if slot.proc is not None:
                slot.proc.wait()
        self.procs.stop_all()
        self.timeline.add("stopped", "every process ended")
        for log in self._client_logs:
            log.close()
        if self.proxy is not None:
            self.proxy_counts = {
                "commands": self.proxy.commands,
                "replies_dropped": self.proxy.replies_dropped,
                "connections_cut": self.proxy.connections_cut,
            }
            self.proxy.stop()

    def node_names(self) -> dict[str, str]:
        """Node ids of this run -> what they are (killed or not)."""
        names = dict(self.names)
        for name, proc in self.workers.items():
            names[name] = "worker, killed" if proc.pid in self.timeline.killed else "worker"
        for slot in self.clients.values():
            for event in read_events(slot.answers):
                if event["event"] == "hello":
                    dead = event["pid"] in self.timeline.killed
                    names[event["node"]] = "client, killed" if dead else "client"
        return names

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)


class ServerChaosRun(ChaosRun):
    """A chaos run on one Redis server (with an append-only file, so a restart keeps the
    data), the nodes behind the fault proxy when there is one: Redis is killed and restarted,
    wiped, paused, and the proxy loses replies and connections."""

    def __init__(self, config: ChaosConfig, redis_server: RedisServer, tmp: Path) -> None:
        self.redis = redis_server
        self.redis_paused: float | None = None
        proxy = None
        if config.use_proxy:
            proxy = FaultProxy("127.0.0.1", redis_server.port)
            proxy.start()
        super().__init__(config, tmp, redis_server.url, proxy)

    @property
    def fsync(self) -> str:
        return self.redis.appendfsync or "off"

    def describe_redis(self) -> str:
        proxy = "on" if self.proxy else "off (girder.testing.proxy missing or disabled)"
        return f"appendfsync {self.fsync}, fault proxy {proxy}"

    def redis_faults(self) -> dict[str, Handler]:
        proxy_faults = dict.fromkeys(PROXY_FAULTS, self._proxy_fault)
        return {
            "restart_redis": self._restart_redis,
            "pause_redis": self._pause_redis,
            "wipe_redis": self._restart_redis,
            **proxy_faults,
        }

    def db(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis.port)

    def servers(self) -> list[redis.Redis]:
        return [self.db()]

    async def _restart_redis(self, fault: Fault) -> bool:
        """kill -9 Redis, and start it again after the downtime (with its data, or for
        `wipe_redis` empty)."""
        if self.redis_paused is not None:
            return False
        wipe = fault.kind == "wipe_redis"
        down = self.timeline.add("redis kill -9", f"down {fault.length:.2f}s", self.redis.pid).t
        await asyncio.to_thread(self.redis.kill)
        if wipe:
            self.redis.wipe()
        await asyncio.sleep(fault.length)
        await asyncio.to_thread(self.redis.start)
        what = "EMPTY (data lost)" if wipe else f"appendfsync {self.redis.appendfsync}"
        up = self.timeline.add("redis up", what).t
        (self.timeline.redis_wiped if wipe else self.timeline.redis_down).append((down, up))
        return True

    async def _pause_redis(self, fault: Fault) -> bool:
        """SIGSTOP Redis for a while: every command and every lease renewal waits."""
        if self.redis_paused is not None or not self.redis.running:
            return False
        self.redis.pause()
        self.redis_paused = self.timeline.add("redis SIGSTOP", f"{fault.length:.2f}s").t
        self.later(fault.length, self._resume_redis)
        return True

    def _resume_redis(self) -> None:
        if self.redis_paused is None:
            return
        self.redis.resume()
        now = self.timeline.add("redis SIGCONT", "").t
        self.timeline.redis_paused.append((self.redis_paused, now))
        self.redis_paused = None

    async def _proxy_fault(self, fault: Fault) -> bool:
        proxy = self.proxy
        if proxy is None:
            return False
        self.timeline.add("proxy", fault.describe().split(" ", 2)[-1])
        if fault.kind == "drop_reply":
            proxy.drop_next_reply(int(fault.length))
        elif fault.kind == "cut_connection":
            proxy.cut_before_next_command()
        elif fault.kind == "delay_replies":
            proxy.delay(fault.amount)
            self.later(fault.length, lambda: proxy.delay(0))
        elif fault.kind == "proxy_outage":
            proxy.refuse(True)
            self.later(fault.length, lambda: proxy.refuse(False))
        else:
            proxy.chaos(fault.pick, p_drop=0.01, p_cut=0.01, p_delay=0.1, max_delay=LEASE / 4)
            self.later(fault.length, proxy.calm)
        return True

    async def calm_redis(self) -> None:
        if self.proxy is not None:
            self.proxy.calm()
            self.proxy.delay(0)
            self.proxy.refuse(False)
        self._resume_redis()
        if not self.redis.running:
            await asyncio.to_thread(self.redis.start)

    def release_redis(self) -> None:
        self._resume_redis()


# -- one whole run ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a run found: the violations (empty: all invariants held) and the report."""

    violations: list[str]
    summary: str
    details: str


def header(run: ChaosRun, schedule: list[Fault]) -> str:
    """What the run does: its settings, how to replay it, its schedule."""
    config = run.config
    lines = [
        f"chaos: seed {config.seed}, {config.seconds}s of faults, {config.workers} workers, "
        f"{config.clients} clients x {config.concurrency} jobs, lease {LEASE}s, "
        + run.describe_redis(),
        f"replay: {SEED_ENV}={config.seed} {SECONDS_ENV}={config.seconds:g}"
        + ("" if config.use_proxy or config.cluster else f" {PROXY_ENV}=0")
        + (f" {FAULTS_ENV}={','.join(config.faults)}" if config.faults else ""),
        "schedule:",
    ]
    lines += [f"  {fault.describe()}" for fault in schedule]
    return "\n".join(lines)


def used_memory(servers: list[redis.Redis]) -> int:
    """Redis's used_memory, summed over `servers` (closed after)."""
    try:
        return sum(int(server.info("memory")["used_memory"]) for server in servers)
    finally:
        for server in servers:
            server.close()


async def run_chaos(run: ChaosRun) -> Verdict:
    """Start the grid, run the load through the schedule, calm down, stop, sweep the blobs
    nothing holds (with no grace: what a distributor would do later), check."""
    schedule = run.schedule()
    print(header(run, schedule), flush=True)
    memory_before = used_memory(run.servers())
    try:
        await run.start()
        await run.inject(schedule)
        await run.calm()
        hangs = await run.finish()
    finally:
        run.stop()
    backend = open_backend(run.url)
    await backend.connect()
    try:
        swept = await backend.sweep_blobs(0)
    finally:
        await backend.close()
    run.timeline.add("swept", f"{swept} blobs nothing held")
    return judge(run, schedule, hangs, memory_before)


async def check_chaos(run: ChaosRun) -> None:
    """Run `run`, write its report to `report.txt` in its folder, and fail the test with the
    violations if there are any."""
    verdict = await run_chaos(run)
    print(verdict.summary)
    problems = "\n".join(f"- {v}" for v in verdict.violations) or "none"
    report = f"violations:\n{problems}\n\n{verdict.summary}\n\n{verdict.details}"
    (run.tmp / "report.txt").write_text(report)
    if verdict.violations:
        count = len(verdict.violations)
        seed = run.config.seed
        pytest.fail(f"{count} invariant violations (seed {seed}):\n{report}", pytrace=False)


def _exits(run: ChaosRun) -> list[str]:
    """Processes that ended on their own with an error (not killed by the harness)."""
    found = []
    for proc in run.procs.procs:
        if proc.pid not in run.timeline.killed and proc.returncode not in (0, None):
            found.append(f"node process pid {proc.pid} exited with {proc.returncode}")
    return found


def judge(run: ChaosRun, schedule: list[Fault], hangs: list[str], memory_before: int) -> Verdict:
    """Check every invariant over the whole run."""
    timeline = run.timeline
    expected = {
        job.id: (f"{job.fn}{job.args}"[:120], job.expected)
        for jobs in run.plans.values()
        for job in jobs
    }
    answers = check_answers(
        {s.slot: s.answers for s in run.clients.values()}, expected, timeline.killed
    )
    runs = read_runs(run.run_logs, timeline.killed)
    fsync = run.fsync
    overlaps = find_overlaps(runs, timeline, fsync)
    repeated = reruns(runs, timeline, fsync)
    db, servers = run.db(), run.servers()
    try:
        memory_after = sum(int(server.info("memory")["used_memory"]) for server in servers)
        leaks = check_leaks(db, run.node_names(), servers)
        memory_clean, scripts = drop_cache_and_measure(db, servers)
        db_size = sum(int(server.dbsize()) for server in servers)
    finally:
        for client in (db, *servers):
            client.close()
    violations = list(hangs)
    violations += [f"wrong answer: {w}" for w in answers.wrong]
    violations += [f"job failed: {e}" for e in answers.errors]
    violations += [f"job lost (submitted, never answered): {lost}" for lost in answers.lost]
    violations += [overlap_text(o, timeline) for o in overlaps if o.excuse is None]
    violations += [
        f"key {key} ran again: {reason}"
        for key, reasons in repeated.items()
        for reason in reasons
        if reason.startswith("UNEXPLAINED")
    ]
    after_hang = "(after a hang, may be its consequence) " if hangs else ""
    violations += [
        f"{after_hang}leaked keys {pattern}: {len(examples)}, e.g. {examples[:3]}"
        for pattern, examples in leaks.leaked.items()
    ]
    violations += [
        f"unhandled exception ({count}x): {what}"
        for what, count in unhandled_exceptions(run.logs).items()
    ]
    violations += _exits(run)
    if answers.completed == 0:
        violations.append("no job completed at all")
    summary = _summary(
        run, answers=answers, runs=runs, overlaps=overlaps, repeated=repeated, leaks=leaks
    )
    summary += (
        f"\nRedis used_memory: before {memory_before}, after {memory_after} "
        f"(with {leaks.cached} cached results, {leaks.count} leaked keys of "
        f"{leaks.leaked_bytes} bytes, {leaks.cached_blobs} blobs of cached results), after "
        f"dropping the cache {memory_clean} (Lua scripts "
        f"{scripts}, DBSIZE {db_size})"
    )
    details = "\n".join(
        [
            header(run, schedule),
            "timeline:",
            timeline.format(),
            f"logs: {run.logs} (process logs), {run.run_logs} (runs), {run.client_dir} (answers)",
            run.log_tails(),
        ]
    )
    return Verdict(violations, summary, details)


def _summary(
    run: ChaosRun,
    *,
    answers: AnswerReport,
    runs: list[Run],
    overlaps: list[Overlap],
    repeated: dict[str, list[str]],
    leaks: LeakReport,
) -> str:
    timeline = run.timeline
    reasons = Counter(reason for found in repeated.values() for reason in found)
    same_process = sum(o.first.pid == o.second.pid for o in overlaps)
    clients = ", ".join(f"slot {s}: {len(p)}" for s, p in answers.incarnations.items())
    return "\n".join(
        [
            f"chaos summary (seed {run.config.seed}; notifications in the nodes' own slots: "
            f"{run.config.spread_notifications or 'none'}):",
            f"faults injected: {dict(timeline.injected)}; skipped (no target): "
            f"{dict(timeline.skipped)}; proxy: {run.proxy_counts or 'none'}",
            f"jobs completed: {answers.completed}; wrong {len(answers.wrong)}, failed "
            f"{len(answers.errors)}, lost {len(answers.lost)}; client incarnations: {clients}",
            f"runs: {len(runs)} of {len({r.key for r in runs})} keys; keys run more than once: "
            f"{len(repeated)} {dict(reasons)}",
            f"keys run twice at once: {len(overlaps)} {dict(Counter(o.kind for o in overlaps))} "
            f"(in one process: {same_process})",
            f"runs that ended in an error: {sum(r.how == 'error' for r in runs)}; requests the "
            f"grid failed, by root cause: {dict(grid_failures(run.logs).most_common(5))}",
            f"left in Redis: {leaks.cached} cached results ({leaks.lost_values} of them values "
            "whose blob a failover lost: computed again when asked) and "
            f"{leaks.moved} moved to their keys' own slots, {leaks.own_inboxes} keys of nodes' "
            f"own inboxes (expiring), {leaks.step_journals} journal entries of records' steps "
            "(expiring), "
            f"leaked: { {p: len(e) for p, e in leaks.leaked.items()} }",
        ]
    )
