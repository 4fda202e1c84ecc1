"""Benchmarks of the distributed grid: a throw-away redis-server, a `girder distributor` and
`girder worker` processes started through the `girder` command, and a client in this process
(`girder.Grid.connect`).

Workloads:

- `floor`: a raw Redis request/reply ping-pong between this process and a second one (LPUSH
  q1 + BLPOP q2 here, BLPOP q1 + LPUSH q2 there), through the same small asyncio client girder
  uses (`girder.backends.resp`, hiredis parsing): p50 and p99 round trip. A remote call cannot
  beat it. Measured round by round next to W1.
- `W1`: one remote call of a trivial function (`grid.call`), distinct arguments every time;
  p50 and p99 over `--calls` sequential calls after a warm-up (target p50 <= 250 us).
- `W2`: `grid.call_all` of `--batch` trivial calls at once: calls per second (target >= 10,000).
- `W3`: the nested `tree(--depth)` (2**(depth+1) - 1 distinct re-entrant calls): wall time
  (target tree(10) <= 0.5 s).
- `W4`: the nested `chain(--chain)` on the same two workers (target chain(200) <= 0.2 s), and
  `chain(--solo-chain)` on ONE worker process (a separate grid): wall time.

Every run uses fresh argument tags, so nothing comes from the result cache. Each line also has
the Redis commands the whole grid sent per request during the timed runs (`INFO commandstats`;
`evalsha` is one round trip per script call, commands run inside scripts are counted too) and
the server's CPU time per request. `--trace` adds a `MONITOR` breakdown of one untimed run of
W1 to W4: the top-level Redis commands per request, by process and by script (on stderr, and
as `trace_per_request` in the lines).

It prints one JSON line per workload on stdout (`bench`, `workload`, `case`, `system`,
`workers`, `runs`, the figures as medians over the runs, and the per-run samples) and a readable
summary on stderr. Every run has a time limit (`--time-limit`); a run that exceeds it is recorded
as a timeout (`"timeouts"`), the grid's state is printed, the grid is restarted, that workload
is not run again, the node logs are kept, and the exit status is 1. Every process it started is
stopped on exit (SIGTERM, then SIGKILL), also on failure or Ctrl-C. The lines carry the git
commit measured (`commit`, "+dirty" when girder/ has changes). The machine's load matters:
compare figures from one run (W1 against the floor measured in the same rounds).

    .venv/bin/python benchmarks/distributed.py              # full run (about a minute)
    .venv/bin/python benchmarks/distributed.py --quick      # CI smoke run (well under 60 s)
    .venv/bin/python benchmarks/distributed.py --workloads floor,W1 --trace
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import median
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.remote_tasks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

import girder
from benchmarks.harness import (
    REPO,
    STOP_GRACE,
    Children,
    fresh_tag,
    percentile,
    repo_env,
    say,
)
from benchmarks.remote_tasks import chain, echo, tree
from girder.backends import open_backend
from girder.backends.base import NodeKind
from girder.backends.cluster import ClusterClient, parse_cluster_url
from girder.backends.resp import RedisClient, parse_url
from girder.config import load_settings
from girder.runner import format_status, grid_status
from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer

TASKS = "benchmarks.remote_tasks"
GIRDER = "girder-redis"
PINGPONG = "redis-pingpong"
PING_QUEUE = "{bench}:pingpong:requests"
PONG_QUEUE = "{bench}:pingpong:replies"
"""One hash tag: on a cluster (`--cluster`) both queues live in one slot."""
STOP = b"stop"
WORKLOADS = ("floor", "W1", "W2", "W3", "W4", "W4solo")


def rounded(values: Sequence[float], digits: int = 1) -> list[float]:
    return [round(v, digits) for v in values]


class Cluster:
    """One grid: a distributor and `workers` worker processes in `pool`, and a client here."""

    def __init__(self, processes: Children, url: str, pool: str, workers: int) -> None:
        self.processes = processes
        self.url = url
        self.pool = pool
        self.workers = workers
        self.grid: girder.Grid | None = None
        self.names = [f"{pool}-distributor"] + [f"{pool}-w{i + 1}" for i in range(workers)]

    async def start(self, ready_timeout: float = 30.0) -> girder.Grid:
        backend = ["--backend", self.url]
        self.processes.girder(self.names[0], "distributor", *backend, "--name", self.pool)
        for name in self.names[1:]:
            self.processes.girder(
                name, "worker", *backend, "--pool", self.pool, "--name", name, "--import", TASKS
            )
        await self._wait_ready(ready_timeout)
        grid = girder.Grid.connect(self.url, pool=self.pool)
        await grid.start()
        self.grid = grid
        return grid

    async def _wait_ready(self, timeout: float) -> None:
        """Until the distributor and every worker are alive and every worker volunteered."""
        backend = open_backend(self.url)
        await backend.connect()
        try:
            deadline = time.monotonic() + timeout
            while True:
                if dead := [n for n in self.processes.dead() if n in self.names]:
                    raise RuntimeError(
                        f"{', '.join(dead)} exited at start-up\n{self.processes.tail(dead)}"
                    )
                alive = {n.node: n.kind for n in await backend.nodes() if n.alive}
                volunteers = set(await backend.volunteers(self.pool))
                workers = set(self.names[1:])
                if (
                    alive.get(self.pool) == NodeKind.DISTRIBUTOR
                    and all(alive.get(w) == NodeKind.WORKER for w in workers)
                    and workers <= volunteers
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the grid {self.pool} was not ready after {timeout} s\n"
                        + self.processes.tail(self.names)
                    )
                await asyncio.sleep(0.05)
        finally:
            await backend.close()

    async def stop(self) -> None:
        if self.grid is not None:
            grid, self.grid = self.grid, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(grid.stop(), STOP_GRACE)
        await asyncio.to_thread(self.processes.stop, self.names)

    def pids(self) -> dict[str, int]:
        return {n: self.processes.running[n].pid for n in self.names if n in self.processes.running}

    def client(self) -> girder.Grid:
        if self.grid is None:
            raise RuntimeError(f"the grid {self.pool} is not running")
        return self.grid

    def check(self) -> None:
        """Raise if a node process died."""
        if dead := [n for n in self.processes.dead() if n in self.names]:
            raise RuntimeError(f"{', '.join(dead)} died\n{self.processes.tail(dead)}")


# -- Redis accounting ---------------------------------------------------------------------------


class ServerStats:
    """Commands the Redis server ran (INFO commandstats) between `reset` and `read`."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url)

    async def reset(self) -> None:
        await self.redis.config_resetstat()

    async def read(self) -> tuple[Counter[str], float]:
        """Calls per command, and the server's microseconds in top-level commands."""
        info = await self.redis.info("commandstats")
        calls: Counter[str] = Counter()
        usec = 0.0
        for name, stats in info.items():
            command = name.removeprefix("cmdstat_")
            if command in ("info", "config|resetstat"):
                continue
            calls[command] = int(stats["calls"])
            if command in TOP_LEVEL:
                usec += float(stats["usec"])
        return calls, usec

    async def close(self) -> None:
        await self.redis.aclose()


TOP_LEVEL = frozenset({"evalsha", "eval", "blpop", "blmove", "script|load", "get", "info"})
"""Commands girder sends but its scripts never run (their server time includes the commands the
scripts run, so this sum is the server's time without double counting)."""


@dataclass
class Accounting:
    """Redis commands per request over the timed runs of one workload."""

    calls: Counter[str] = field(default_factory=Counter)
    usec: float = 0.0
    others_usec: float = 0.0
    """On a cluster: the server time of the other primaries (the grid's is `usec`)."""
    requests: int = 0

    def add(self, calls: Counter[str], usec: float, requests: int, others_usec: float) -> None:
        self.calls.update(calls)
        self.usec += usec
        self.others_usec += others_usec
        self.requests += requests

    def fields(self) -> dict[str, Any]:
        if not self.requests:
            return {}
        per = {
            command: round(count / self.requests, 3)
            for command, count in self.calls.most_common()
            if count / self.requests >= 0.001
        }
        return {
            "redis_calls_per_request": per,
            "redis_evalsha_per_request": per.get("evalsha", 0.0),
            "redis_blpop_per_request": per.get("blpop", 0.0),
            "redis_server_us_per_request": round(self.usec / self.requests, 2),
            "redis_other_primaries_us_per_request": round(self.others_usec / self.requests, 2),
        }


# -- the floor: raw Redis ping-pong -------------------------------------------------------------


def floor_client(url: str) -> RedisClient | ClusterClient:
    """The client girder itself talks through (`girder.backends.resp`), so that the floor and
    W1 differ by girder's own work, not by the client library."""
    if url.startswith("redis+cluster://"):
        return ClusterClient(parse_cluster_url(url), anchor=PING_QUEUE)
    return RedisClient(parse_url(url))


async def pong(url: str) -> None:
    """The far side of the floor ping-pong: BLPOP a request, LPUSH it back, until `stop`."""
    redis = floor_client(url)
    try:
        while True:
            [reply] = await redis.blocking([("BLPOP", PING_QUEUE, 1)])
            if reply is None:
                continue
            value = reply[1]
            if value == STOP:
                return
            await redis.execute("LPUSH", PONG_QUEUE, value)
    finally:
        redis.close()


class Floor:
    """This side of the ping-pong, and a plain PING round trip for reference."""

    def __init__(self, url: str) -> None:
        self.redis = floor_client(url)

    async def round_trip(self, value: bytes) -> None:
        await self.redis.execute("LPUSH", PING_QUEUE, value)
        [reply] = await self.redis.blocking([("BLPOP", PONG_QUEUE, 10)])
        if reply is None or reply[1] != value:
            raise RuntimeError(f"ping-pong lost {value!r} (got {reply!r})")

    async def run(self, trips: int) -> tuple[list[float], list[float]]:
        """Microseconds of `trips` ping-pong round trips, and of as many PINGs."""
        clock = time.perf_counter_ns
        trip_us, ping_us = [], []
        for index in range(trips):
            start = clock()
            await self.round_trip(b"%d" % index)
            trip_us.append((clock() - start) / 1000)
        for _ in range(trips):
            start = clock()
            await self.redis.execute("PING")
            ping_us.append((clock() - start) / 1000)
        return trip_us, ping_us

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.execute("LPUSH", PING_QUEUE, STOP)
        self.redis.close()


# -- the workloads ------------------------------------------------------------------------------


async def w1_calls(grid: girder.Grid, calls: int, warmup: int) -> list[float]:
    """Microseconds of each of `calls` sequential `grid.call`s, after `warmup` more."""
    tag = fresh_tag("w1")
    for index in range(warmup):
        await grid.call(echo, tag, -1 - index)
    clock = time.perf_counter_ns
    samples = []
    for index in range(calls):
        start = clock()
        value = await grid.call(echo, tag, index)
        samples.append((clock() - start) / 1000)
        if value != index:
            raise AssertionError(f"echo gave {value}, expected {index}")
    return samples


async def w2_call_all(grid: girder.Grid, batch: int) -> float:
    """Seconds of one `grid.call_all` of `batch` trivial calls."""
    tag = fresh_tag("w2")
    requests = [(echo, tag, index) for index in range(batch)]
    start = time.perf_counter()
    values = await grid.call_all(requests)
    seconds = time.perf_counter() - start
    if values != list(range(batch)):
        raise AssertionError("call_all gave wrong values")
    return seconds


async def w3_tree(grid: girder.Grid, depth: int) -> float:
    start = time.perf_counter()
    value = await grid.call(tree, depth, 0, fresh_tag("w3"))
    seconds = time.perf_counter() - start
    if value != 2 ** (depth + 1) - 1:
        raise AssertionError(f"tree({depth}) gave {value}")
    return seconds


async def w4_chain(grid: girder.Grid, depth: int) -> float:
    start = time.perf_counter()
    value = await grid.call(chain, depth, fresh_tag("w4"))
    seconds = time.perf_counter() - start
    if value != depth:
        raise AssertionError(f"chain({depth}) gave {value}")
    return seconds


# -- tracing (MONITOR) --------------------------------------------------------------------------


def socket_owners(pids: dict[str, int]) -> dict[int, str]:
    """Local TCP port -> name of the process (of `pids`) that owns the socket (Linux /proc)."""
    owner_of_inode: dict[str, str] = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owner_of_inode[target[8:-1]] = name
    owners: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in owner_of_inode:
                    owners[int(fields[1].rsplit(":", 1)[1], 16)] = owner_of_inode[fields[9]]
    return owners


class Tracer:
    """Counts the top-level commands the Redis server receives (MONITOR), by command (and
    script) and by the process that sent them. Commands run inside scripts are not counted.

    MONITOR slows the server down: traced runs are never timed runs.
    """

    def __init__(self, url: str, script_names: dict[str, str], pids: dict[str, int]) -> None:
        self.url = url
        self.script_names = script_names
        self.pids = pids
        self.owners = socket_owners(pids)
        self.counts: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._redis: aioredis.Redis | None = None
        self._ready = asyncio.Event()
        self._marker = ""

    def _owner(self, port: str) -> str:
        number = int(port) if port.isdigit() else -1
        if number not in self.owners:
            self.owners = socket_owners(self.pids)  # a new connection: look again
            self.owners.setdefault(number, "other")
        return self.owners[number]

    def _label(self, command: str, port: str) -> str | None:
        parts = command.split(" ", 2)
        name = parts[0].lower()
        if name in ("monitor", "info", "config|resetstat", "ping", "lpush", "echo"):
            return None
        if name == "evalsha" and len(parts) > 1:
            name = f"evalsha {self.script_names.get(parts[1], parts[1][:8])}"
        return f"{self._owner(port):>18}  {name}"

    async def _listen(self) -> None:
        self._redis = aioredis.Redis.from_url(self.url, socket_timeout=None)  # MONITOR blocks
        async with self._redis.monitor() as monitor:
            self._ready.set()
            while True:
                event = await monitor.next_command()
                if event["client_type"] == "lua":
                    continue
                command = event["command"]
                if command == f"ECHO {self._marker}":
                    return
                label = self._label(command, event["client_port"])
                if label is not None:
                    self.counts[label] += 1

    async def __aenter__(self) -> Tracer:
        self._marker = f"girder-trace-end-{uuid.uuid4().hex}"
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Wait until MONITOR delivered everything up to now (an ECHO marks the end)."""
        assert self._task is not None
        redis = aioredis.Redis.from_url(self.url)
        try:
            await redis.echo(self._marker)
            await asyncio.wait_for(asyncio.shield(self._task), 60)
        finally:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            await redis.aclose()
            if self._redis is not None:
                await self._redis.aclose()


def script_names() -> dict[str, str]:
    """SHA -> script name for the scripts of a default-prefix RedisBackend (as the benchmark's
    nodes build them, with their heartbeat interval)."""
    from girder.backends.redis_keys import RedisKeys  # noqa: PLC0415 - trace only
    from girder.backends.redis_scripts import build_scripts  # noqa: PLC0415
    from girder.config import Settings  # noqa: PLC0415

    tick = max(1, round(2000 * Settings().heartbeat_interval))
    return {script.sha: name for name, script in build_scripts(RedisKeys("girder"), tick).items()}


async def trace(cluster: Cluster, sizes: Sizes) -> dict[str, dict[str, float]]:
    """Top-level Redis commands per request of one run of W1 to W4, under MONITOR.

    Pipelined commands count one each, though they share a round trip.
    """
    grid = cluster.client()
    names = script_names()
    traced: dict[str, dict[str, float]] = {}
    calls = min(sizes.calls, 500)
    for workload, requests, body in (
        ("W1", calls, partial(w1_calls, grid, calls, 0)),
        ("W2", sizes.batch, partial(w2_call_all, grid, sizes.batch)),
        ("W3", 2 ** (sizes.depth + 1) - 1, partial(w3_tree, grid, sizes.depth)),
        ("W4", sizes.chain + 1, partial(w4_chain, grid, sizes.chain)),
    ):
        await w1_calls(grid, 20, 0)  # settle
        pids = {"client": os.getpid()} | cluster.pids()
        async with Tracer(cluster.url, names, pids) as tracer:
            await asyncio.wait_for(body(), 120)
        per = {
            label: round(count / requests, 3)
            for label, count in sorted(tracer.counts.items(), key=lambda kv: -kv[1])
            if count / requests >= 0.001
        }
        by_process: dict[str, float] = {}
        for label, count in per.items():
            name = label.split()[0]
            by_process[name] = by_process.get(name, 0.0) + count
        traced[workload] = per
        say(f"trace {workload}: top-level Redis commands per request, by process and command")
        say(
            f"  {sum(per.values()):8.3f}  in all: "
            + ", ".join(
                f"{name} {count:.2f}"
                for name, count in sorted(by_process.items(), key=lambda kv: -kv[1])
            )
        )
        for label, count in per.items():
            say(f"  {count:8.3f}  {label}")
    return traced


# -- running it all -----------------------------------------------------------------------------


@dataclass
class Sizes:
    calls: int
    warmup: int
    batch: int
    depth: int
    chain: int
    solo_chain: int
    floor_trips: int


@dataclass
class Series:
    """The timed runs of one workload."""

    samples: list[Any] = field(default_factory=list)
    accounting: Accounting = field(default_factory=Accounting)
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return bool(self.timeouts or self.errors)


def source_version() -> str | None:
    """The git commit of the code measured (with "+dirty" if girder/ has changes), if known."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "girder"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if changes else "")


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        sizes: Sizes,
        url: str,
        processes: Children,
        *,
        server_url: str | None = None,
        other_urls: Sequence[str] = (),
    ):
        """`server_url`: the plain URL of the server that holds the grid, when `url` is a
        cluster's (its INFO commandstats are the grid's); `other_urls`: the other primaries'."""
        self.args = args
        self.sizes = sizes
        self.url = url
        self.processes = processes
        self.stats = ServerStats(server_url or url)
        self.others = [ServerStats(other) for other in other_urls]
        self.failed = False
        self.common: dict[str, Any] = {
            "python": platform.python_version(),
            "girder": girder.__version__,
            "cpus": os.cpu_count(),
            "date": datetime.date.today().isoformat(),
            "commit": source_version(),
            "quick": args.quick,
        }

    def emit(self, **fields: Any) -> None:
        print(json.dumps({"bench": "distributed", **fields, **self.common}), flush=True)

    async def guarded(
        self,
        what: str,
        body: Callable[..., Awaitable[Any]],
        cluster: Cluster | None,
        limit: float | None = None,
    ) -> tuple[str | None, Any]:
        """Run `body` (given the cluster's client, if there is a cluster) under a time limit.

        Returns (None, its value), or ("timeout" or the error, None) after a failure; then the
        grid's state is printed and the grid restarted on an empty Redis database.
        """
        limit = self.args.time_limit if limit is None else limit
        try:
            run = body() if cluster is None else body(cluster.client())
            value = await asyncio.wait_for(run, limit)
            if cluster is not None:
                cluster.check()
        except TimeoutError:
            problem = "timeout"
            say(f"  {what}: TIMEOUT after {limit} s")
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"[:2000]
            say(f"  {what}: FAILED {problem}")
        else:
            return None, value
        self.failed = True
        if cluster is not None:
            await self.dump_state(what)
            say("  restarting the grid")
            await cluster.stop()
            await self.stats.redis.flushall()
            await cluster.start()
        return problem, None

    async def dump_state(self, what: str) -> None:
        """Print `girder status` of the grid (which node holds what) after a failure."""
        try:
            settings = load_settings(backend=self.url)
            status = await asyncio.wait_for(grid_status(settings), 10)
            say(f"  grid state after {what}:\n" + format_status(status))
        except Exception as exc:
            say(f"  (no grid state: {exc!r})")

    async def timed(
        self,
        series: Series,
        what: str,
        requests: int,
        body: Callable[..., Awaitable[Any]],
        cluster: Cluster | None,
    ) -> bool:
        """One timed run of a workload, counting Redis commands. False if it failed."""
        if series.stopped:
            return False
        for stats in (self.stats, *self.others):
            await stats.reset()
        problem, sample = await self.guarded(what, body, cluster)
        if problem == "timeout":
            series.timeouts += 1
        elif problem is not None:
            series.errors.append(problem)
        else:
            calls, usec = await self.stats.read()
            others = sum([(await stats.read())[1] for stats in self.others])
            series.accounting.add(calls, usec, requests, others)
            series.samples.append(sample)
        return problem is None

    @staticmethod
    def outcome_fields(series: Series) -> dict[str, Any]:
        fields: dict[str, Any] = {"timeouts": series.timeouts}
        if series.errors:
            fields["errors"] = series.errors
        return fields | series.accounting.fields()

    async def warm_up(self, cluster: Cluster) -> None:
        """A few calls of every kind, untimed (a failure is reported, and the grid restarted)."""
        sizes = self.sizes
        for what, body in (
            ("warm-up W1", partial(w1_calls, calls=0, warmup=sizes.warmup)),
            ("warm-up W2", partial(w2_call_all, batch=min(sizes.batch, 500))),
            ("warm-up W3", partial(w3_tree, depth=min(sizes.depth, 6))),
            ("warm-up W4", partial(w4_chain, depth=min(sizes.chain, 50))),
        ):
            await self.guarded(what, body, cluster)

    def wants(self, name: str) -> bool:
        return name in self.args.workload_set

    async def two_workers(self) -> None:
        """floor, W1, W2, W3 and W4 chain(n) on two workers, round by round."""
        sizes, runs = self.sizes, self.args.runs
        steps = [
            (name, requests, body)
            for name, requests, body in (
                ("W1", sizes.calls, partial(w1_calls, calls=sizes.calls, warmup=sizes.warmup)),
                ("W2", sizes.batch, partial(w2_call_all, batch=sizes.batch)),
                ("W3", 2 ** (sizes.depth + 1) - 1, partial(w3_tree, depth=sizes.depth)),
                ("W4", sizes.chain + 1, partial(w4_chain, depth=sizes.chain)),
            )
            if self.wants(name)
        ]
        if not (steps or self.wants("floor") or self.args.trace):
            return
        self.processes.start("pong", [sys.executable, __file__, "--pong", self.url])
        floor = Floor(self.url)
        cluster = Cluster(self.processes, self.url, "bench", workers=2)
        series = {name: Series() for name in ("floor", "W1", "W2", "W3", "W4")}
        pings: list[list[float]] = []
        traced: dict[str, dict[str, float]] = {}
        try:
            await asyncio.wait_for(floor.run(50), 30)  # warm-up; the pong process is up
            await cluster.start()
            if self.args.watch_events:
                self.processes.girder(
                    "dashboard", "dashboard", "--backend", self.url, "--port", "0"
                )
            await self.warm_up(cluster)
            for round_ in range(runs):
                say(f"round {round_ + 1}/{runs}")
                trips = partial(floor.run, sizes.floor_trips)
                if self.wants("floor") and await self.timed(
                    series["floor"], "floor", sizes.floor_trips, trips, None
                ):
                    trip_us, ping_us = series["floor"].samples.pop()
                    series["floor"].samples.append(trip_us)
                    pings.append(ping_us)
                for name, requests, body in steps:
                    await self.timed(series[name], name, requests, body, cluster)
            if self.args.trace:
                traced = await trace(cluster, sizes)
        finally:
            await cluster.stop()
            await floor.close()
            self.processes.stop(["pong", "dashboard"])
        if self.wants("floor"):
            self.report_floor(series["floor"], pings)
        if self.wants("W1"):
            self.report_w1(series["W1"], series["floor"], traced.get("W1"))
        if self.wants("W2"):
            self.report_w2(series["W2"], traced.get("W2"))
        if self.wants("W3"):
            self.report_wall(
                series["W3"],
                workload="W3",
                case=f"tree({sizes.depth})",
                workers=2,
                requests=2 ** (sizes.depth + 1) - 1,
                target=0.5 if sizes.depth == 10 else None,
                traced=traced.get("W3"),
            )
        if self.wants("W4"):
            self.report_wall(
                series["W4"],
                workload="W4",
                case=f"chain({sizes.chain})",
                workers=2,
                requests=sizes.chain + 1,
                target=0.2 if sizes.chain == 200 else None,
                traced=traced.get("W4"),
            )

    async def one_worker(self) -> None:
        """W4 chain(n) on one worker process (a grid of its own)."""
        if not self.wants("W4solo"):
            return
        sizes = self.sizes
        cluster = Cluster(self.processes, self.url, "solo", workers=1)
        series = Series()
        try:
            await self.stats.redis.flushall()
            await cluster.start()
            await self.guarded(
                "warm-up W4 solo", partial(w4_chain, depth=min(sizes.solo_chain, 100)), cluster
            )
            for round_ in range(self.args.runs):
                say(f"solo round {round_ + 1}/{self.args.runs}")
                body = partial(w4_chain, depth=sizes.solo_chain)
                await self.timed(series, "W4 solo", sizes.solo_chain + 1, body, cluster)
        finally:
            await cluster.stop()
        self.report_wall(
            series,
            workload="W4",
            case=f"chain({sizes.solo_chain})",
            workers=1,
            requests=sizes.solo_chain + 1,
            target=None,
        )

    # -- reports ------------------------------------------------------------------------------

    def report_floor(self, floor: Series, pings: list[list[float]]) -> None:
        p50 = [percentile(s, 0.5) for s in floor.samples]
        p99 = [percentile(s, 0.99) for s in floor.samples]
        ping_p50 = [percentile(s, 0.5) for s in pings]
        self.emit(
            workload="floor",
            case="lpush+blpop ping-pong",
            system=PINGPONG,
            workers=0,
            processes=2,
            runs=self.args.runs,
            round_trips=self.sizes.floor_trips,
            p50_us=round(median(p50), 1) if p50 else None,
            p99_us=round(median(p99), 1) if p99 else None,
            ping_p50_us=round(median(ping_p50), 1) if ping_p50 else None,
            p50_us_per_run=rounded(p50),
            p99_us_per_run=rounded(p99),
            **self.outcome_fields(floor),
        )
        if p50:
            say(
                f"floor  ping-pong p50 {median(p50):7.1f} us  p99 {median(p99):7.1f} us"
                f"  (one PING: p50 {median(ping_p50):.1f} us)"
            )

    def report_w1(self, w1: Series, floor: Series, traced: dict[str, float] | None) -> None:
        p50 = [percentile(s, 0.5) for s in w1.samples]
        p99 = [percentile(s, 0.99) for s in w1.samples]
        floor_p50 = [percentile(s, 0.5) for s in floor.samples]
        # Side by side: each round's W1 p50 over the same round's floor p50.
        ratios = [a / b for a, b in zip(p50, floor_p50, strict=False)]
        extra: dict[str, Any] = {"trace_per_request": traced} if traced else {}
        self.emit(
            workload="W1",
            case="grid.call(echo) sequential",
            system=GIRDER,
            workers=2,
            runs=self.args.runs,
            calls=self.sizes.calls,
            p50_us=round(median(p50), 1) if p50 else None,
            p99_us=round(median(p99), 1) if p99 else None,
            mean_us=round(median([statistics.fmean(s) for s in w1.samples]), 1)
            if w1.samples
            else None,
            target_p50_us=250,
            p50_to_floor=round(median(ratios), 2) if ratios else None,
            p50_us_per_run=rounded(p50),
            p99_us_per_run=rounded(p99),
            **self.outcome_fields(w1),
            **extra,
        )
        if p50:
            versus = f"; x{median(ratios):.2f} the floor" if ratios else ""
            say(
                f"W1     grid.call p50 {median(p50):7.1f} us  p99 {median(p99):7.1f} us"
                f"  (target p50 <= 250{versus})"
            )

    def report_w2(self, w2: Series, traced: dict[str, float] | None) -> None:
        batch = self.sizes.batch
        rates = [batch / s for s in w2.samples]
        extra: dict[str, Any] = {"trace_per_request": traced} if traced else {}
        self.emit(
            workload="W2",
            case=f"call_all({batch})",
            system=GIRDER,
            workers=2,
            runs=self.args.runs,
            calls=batch,
            calls_per_second=round(median(rates)) if rates else None,
            seconds=round(median(w2.samples), 4) if w2.samples else None,
            target_calls_per_second=10_000,
            calls_per_second_per_run=rounded(rates, 0),
            **self.outcome_fields(w2),
            **extra,
        )
        if rates:
            say(f"W2     call_all({batch}) {median(rates):9.0f} calls/s  (target >= 10,000)")

    def report_wall(
        self,
        series: Series,
        *,
        workload: str,
        case: str,
        workers: int,
        requests: int,
        target: float | None,
        traced: dict[str, float] | None = None,
    ) -> None:
        seconds = median(series.samples) if series.samples else None
        extra: dict[str, Any] = {"trace_per_request": traced} if traced else {}
        self.emit(
            workload=workload,
            case=case,
            system=GIRDER,
            workers=workers,
            runs=self.args.runs,
            requests=requests,
            seconds=None if seconds is None else round(seconds, 4),
            us_per_request=None if seconds is None else round(seconds / requests * 1e6, 1),
            target_seconds=target,
            seconds_per_run=rounded(series.samples, 4),
            **self.outcome_fields(series),
            **extra,
        )
        if seconds is not None:
            aim = f"  (target <= {target} s)" if target is not None else ""
            say(
                f"{workload:6} {case} on {workers} worker{'s' if workers > 1 else ''}"
                f" {seconds:8.3f} s  {seconds / requests * 1e6:7.1f} us/request{aim}"
            )

    async def run(self) -> None:
        try:
            await self.two_workers()
            await self.one_worker()
        finally:
            for stats in (self.stats, *self.others):
                await stats.close()


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmarks of girder on Redis with worker processes; one JSON line per "
        "workload on stdout."
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs per workload")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run")
    parser.add_argument("--calls", type=int, help="W1 sequential calls per run (2000; quick 300)")
    parser.add_argument("--batch", type=int, help="W2 calls at once (5000; quick 1000)")
    parser.add_argument("--depth", type=int, help="W3 tree depth (10; quick 8)")
    parser.add_argument("--chain", type=int, help="W4 chain depth on two workers (200; quick 100)")
    parser.add_argument(
        "--solo-chain", type=int, help="W4 chain depth on one worker (5000; quick 1000)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="seconds per timed run (default 60)"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="also trace one run of W1 to W4 with MONITOR: Redis commands per request by "
        "process and script (on stderr and in the lines)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--logs", help="keep the node processes' logs in this folder")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run on a private Redis Cluster (3 primaries, 3 replicas; redis+cluster:// URL) "
        "instead of one redis-server; Redis figures are those of the grid's primary",
    )
    parser.add_argument(
        "--watch-events",
        action="store_true",
        default=os.environ.get("BENCH_WATCH_EVENTS") == "1",
        help="run `girder dashboard` on the grid meanwhile: it reads the events four times a "
        "second, so that they are published (env BENCH_WATCH_EVENTS=1, for ab.py)",
    )
    parser.add_argument("--pong", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.workload_set = {name for name in args.workloads.split(",") if name}
    if unknown := args.workload_set - set(WORKLOADS):
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    quick = args.quick
    args.sizes = Sizes(
        calls=args.calls or (300 if quick else 2000),
        warmup=100 if quick else 300,
        batch=args.batch or (1000 if quick else 5000),
        depth=args.depth if args.depth is not None else (8 if quick else 10),
        chain=args.chain if args.chain is not None else (100 if quick else 200),
        solo_chain=args.solo_chain if args.solo_chain is not None else (1000 if quick else 5000),
        floor_trips=300 if quick else 2000,
    )
    if quick and args.time_limit == 60.0:
        args.time_limit = 20.0
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: unwind like Ctrl-C, so that every `finally` stops its processes."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the exit status is 1 if any run failed or timed out (130 if
    interrupted), so a CI smoke run (`--quick`) catches a grid that hangs."""
    args = parse_args(argv)
    if args.pong:
        asyncio.run(pong(args.pong))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="girder-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    processes = Children(
        repo_env(GIRDER_LOG_LEVEL=os.environ.get("GIRDER_LOG_LEVEL", "WARNING")), logs
    )
    failed = True
    try:
        if args.cluster:
            with RedisClusterServers() as servers:
                owner = servers.owner(servers.keyslot("{girder}:leases"))
                say(f"Redis Cluster {servers.url}, the grid on {owner.url}; logs in {logs}")
                others = [p.url for p in servers.primaries() if p.url != owner.url]
                bench = Bench(
                    args,
                    args.sizes,
                    servers.url,
                    processes,
                    server_url=owner.url,
                    other_urls=others,
                )
                asyncio.run(bench.run())
                failed = bench.failed
        else:
            with RedisServer() as server:
                say(f"redis-server on {server.url}; node logs in {logs}")
                bench = Bench(args, args.sizes, server.url, processes)
                asyncio.run(bench.run())
                failed = bench.failed
    except KeyboardInterrupt:
        say("interrupted; every process stopped")
        return 130
    finally:
        processes.close()
        if failed or args.logs:
            say(f"node logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    say(f"done in {time.perf_counter() - started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
