"""What every peer module shares: the `Peer` interface, the per-system driver that runs the
workloads under their time limits and prints one JSON line per (system, variant, workload), the
statistics, stall (deadlock) detection and child-process handling.

Each system runs in its own process (`python -m benchmarks.compare.<module> ...`, started by
the harness), so that one system's threads, event loops and worker processes cannot disturb the
next one, and so that the harness can kill everything a system left behind.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from benchmarks.compare.workloads import (
    CACHE,
    COUNTER_URL_ENV,
    DAG,
    W1,
    W2,
    W3,
    W4,
    WORKLOADS,
    DagShape,
    Sizes,
)
from benchmarks.harness import percentile, repo_env, say

REPEAT_BUDGET = 30.0
"""Seconds of measured runs per workload after which no further run starts (at least one)."""


def child_env(redis_url: str) -> dict[str, str]:
    """Environment of every process a peer starts: the repo importable, the counter's Redis."""
    return repo_env(**{COUNTER_URL_ENV: redis_url})


class WorkloadTimeout(Exception):
    """The workload went past its time limit."""


class Deadlock(Exception):
    """Nothing progressed for the stall period while work was outstanding."""


class NotApplicable(Exception):
    """The system has no such thing (e.g. no memoization)."""


class Aborted(Exception):
    """The harness stopped the workload to protect the machine (e.g. too many processes)."""


@dataclass
class Limits:
    """Time limits of one workload run."""

    seconds: float
    stall: float

    def deadline(self) -> float:
        return time.monotonic() + self.seconds


def timed_calls(
    call: Callable[[int], object],
    calls: int,
    expected: Callable[[int], object],
    limits: Limits | None = None,
) -> list[float]:
    """Microseconds of each of `calls` sequential calls `call(i)`, each of which must return
    `expected(i)`; with `limits`, a `WorkloadTimeout` once they run past its time limit."""
    deadline = None if limits is None else limits.deadline()
    samples = []
    for i in range(calls):
        start = time.perf_counter_ns()
        value = call(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
        _check(value, expected(i), index=i, calls=calls, deadline=deadline, limits=limits)
    return samples


async def timed_calls_async(
    call: Callable[[int], Awaitable[object]],
    calls: int,
    expected: Callable[[int], object],
    limits: Limits | None = None,
) -> list[float]:
    """`timed_calls` for a coroutine function."""
    deadline = None if limits is None else limits.deadline()
    samples = []
    for i in range(calls):
        start = time.perf_counter_ns()
        value = await call(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
        _check(value, expected(i), index=i, calls=calls, deadline=deadline, limits=limits)
    return samples


def _check(
    value: object,
    expected: object,
    *,
    index: int,
    calls: int,
    deadline: float | None,
    limits: Limits | None,
) -> None:
    assert value == expected, f"call {index} gave {value!r}, expected {expected!r}"
    if deadline is not None and limits is not None and time.monotonic() > deadline:
        raise WorkloadTimeout(f"{index + 1} of {calls} calls in {limits.seconds:g} s")


class StallWatch:
    """Declares a deadlock when a progress probe (e.g. Redis DBSIZE) stops changing.

    `check()` is called from a waiting loop; it raises `WorkloadTimeout` past the deadline and
    `Deadlock` when the probe gave the same value for `limits.stall` seconds.
    """

    def __init__(self, limits: Limits, probe: Callable[[], Any], what: str) -> None:
        self.limits = limits
        self.probe = probe
        self.what = what
        self.started = time.monotonic()
        self.deadline = self.started + limits.seconds
        self.last_value: Any = probe()
        self.last_change = self.started

    def check(self) -> None:
        now = time.monotonic()
        value = self.probe()
        if value != self.last_value:
            self.last_value = value
            self.last_change = now
        elif now - self.last_change >= self.limits.stall:
            raise Deadlock(
                f"{self.what}: no progress for {self.limits.stall:g} s "
                f"(stalled after {self.last_change - self.started:.1f} s)"
            )
        if now > self.deadline:
            raise WorkloadTimeout(f"{self.what}: still running after {self.limits.seconds:g} s")


def redis_dbsize_probe(url: str) -> Callable[[], int]:
    """A progress probe: the number of keys in the Redis database (results, job records)."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(url)

    def probe() -> int:
        return int(client.dbsize())

    return probe


def flush_redis(url: str) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


# -- the peer interface -------------------------------------------------------------------------


@dataclass
class Context:
    """What the harness tells one system's process."""

    redis_url: str
    sizes: Sizes
    runs: int
    limit: float
    stall: float
    workloads: list[str]
    workers: int
    logs: Path
    quick: bool = False
    label: str | None = None
    """The system's name in the output when it differs from `Peer.system` (scaling runs)."""

    def limits(self) -> Limits:
        return Limits(self.limit, self.stall)


@dataclass
class CacheResult:
    """Latencies of repeated calls, and what was measured when the system has no memoization."""

    samples_us: list[float]
    closest: str | None = None
    """None: real memoization. Otherwise: the closest equivalent that was measured."""


@dataclass
class DagResult:
    seconds: float
    executions: int


class Peer(abc.ABC):
    """One system under test. Every workload method raises `WorkloadTimeout`/`Deadlock` when
    it cannot finish within `limits` (it never blocks past `limits.seconds` plus a little)."""

    system: ClassVar[str]
    nested_variants: ClassVar[tuple[str, ...]] = ("",)
    """Ways to make nested calls; each is measured and reported as its own row."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.extra: dict[str, Any] = {}
        """Per-workload extra figures a peer wants in the JSON line (e.g. processes seen)."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The configuration used, for the report."""

    @abc.abstractmethod
    def versions(self) -> dict[str, str]: ...

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def reset(self) -> None:
        """After a timeout or deadlock: stop everything, forget all state, start afresh."""
        await self.stop()
        flush_redis(self.ctx.redis_url)
        await self.start()

    @abc.abstractmethod
    async def warm_up(self) -> None:
        """A few small unmeasured calls of every kind."""

    @abc.abstractmethod
    async def w1(self, calls: int, warmup: int, limits: Limits) -> list[float]:
        """Microseconds of each sequential call."""

    @abc.abstractmethod
    async def w2(self, calls: int, limits: Limits) -> float:
        """Seconds for `calls` trivial calls submitted at once."""

    @abc.abstractmethod
    async def w3(self, variant: str, depth: int, limits: Limits) -> float: ...

    @abc.abstractmethod
    async def w4(self, variant: str, depth: int, limits: Limits) -> float: ...

    @abc.abstractmethod
    async def cache(self, calls: int, limits: Limits) -> CacheResult: ...

    @abc.abstractmethod
    async def dag(self, variant: str, shape: DagShape, limits: Limits) -> DagResult: ...


# -- the per-system driver ----------------------------------------------------------------------


@dataclass
class Series:
    samples: list[Any] = field(default_factory=list)
    status: str = "ok"
    note: str | None = None


def summarize(workload: str, series: Series, sizes: Sizes) -> dict[str, Any]:
    """The figures of one (system, variant, workload) from its runs."""
    out: dict[str, Any] = {}
    samples = series.samples
    if not samples:
        return out
    if workload in (W1, CACHE):
        lists = [s.samples_us if isinstance(s, CacheResult) else s for s in samples]
        p50 = [percentile(s, 0.5) for s in lists]
        p99 = [percentile(s, 0.99) for s in lists]
        out["p50_us"] = round(statistics.median(p50), 1)
        out["p99_us"] = round(statistics.median(p99), 1)
        out["p50_us_per_run"] = [round(v, 1) for v in p50]
        out["p99_us_per_run"] = [round(v, 1) for v in p99]
        if workload == CACHE:
            closest = samples[0].closest
            out["memoization"] = closest is None
            if closest is not None:
                out["measured"] = closest
    elif workload == W2:
        rates = [sizes.w2_calls / s for s in samples]
        out["calls_per_second"] = round(statistics.median(rates))
        out["seconds"] = round(statistics.median(samples), 4)
        out["calls_per_second_per_run"] = [round(r) for r in rates]
    elif workload in (W3, W4):
        out["seconds"] = round(statistics.median(samples), 4)
        out["seconds_per_run"] = [round(s, 4) for s in samples]
    elif workload == DAG:
        out["seconds"] = round(statistics.median(s.seconds for s in samples), 4)
        out["executions"] = int(statistics.median(s.executions for s in samples))
        out["seconds_per_run"] = [round(s.seconds, 4) for s in samples]
        out["executions_per_run"] = [s.executions for s in samples]
        out["naive_executions"] = sizes.dag.naive_executions
        out["distinct_nodes"] = sizes.dag.distinct_nodes
    return out


class Driver:
    """Runs the chosen workloads on one peer and prints a JSON line for each."""

    def __init__(self, peer: Peer, ctx: Context, label: str | None = None) -> None:
        self.peer = peer
        self.ctx = ctx
        self.label = label

    def emit(self, workload: str, variant: str, series: Series, seconds: float) -> None:
        ctx = self.ctx
        line: dict[str, Any] = {
            "bench": "compare",
            "system": self.label or self.peer.system,
            "variant": variant or None,
            "workload": workload,
            "case": ctx.sizes.case(workload),
            "status": series.status,
            "workers": ctx.workers,
            "runs": len(series.samples),
            **summarize(workload, series, ctx.sizes),
            **self.peer.extra,
            "elapsed_s": round(seconds, 2),
            "quick": ctx.quick,
        }
        if series.note:
            line["note"] = series.note
        line["settings"] = self.peer.settings()
        line["versions"] = self.peer.versions()
        print(json.dumps(line), flush=True)

    async def one(self, workload: str, variant: str) -> Series:
        ctx, peer, sizes = self.ctx, self.peer, self.ctx.sizes
        series = Series()
        bodies: dict[str, Callable[[Limits], Awaitable[Any]]] = {
            W1: lambda lim: peer.w1(sizes.w1_calls, sizes.w1_warmup, lim),
            W2: lambda lim: peer.w2(sizes.w2_calls, lim),
            W3: lambda lim: peer.w3(variant, sizes.w3_depth, lim),
            W4: lambda lim: peer.w4(variant, sizes.w4_depth, lim),
            CACHE: lambda lim: peer.cache(sizes.cache_calls, lim),
            DAG: lambda lim: peer.dag(variant, sizes.dag, lim),
        }
        body = bodies[workload]
        name = f"{self.label or peer.system}{' [' + variant + ']' if variant else ''} {workload}"
        budget_end = time.monotonic() + min(ctx.limit, REPEAT_BUDGET)
        last = 0.0
        for run in range(ctx.runs):
            if run and time.monotonic() + last > budget_end:
                say(f"  {name}: {run} run(s) used the repeat budget; no more")
                series.note = (
                    f"{run} of {ctx.runs} runs: more would pass the repeat budget of "
                    f"{min(ctx.limit, REPEAT_BUDGET):g} s"
                )
                break
            peer.extra = {}
            limits = ctx.limits()
            started = time.monotonic()
            try:
                # The backstop: a peer honours the limit itself (sync libraries cannot be
                # interrupted from here); this catches an async one that does not.
                sample = await asyncio.wait_for(body(limits), limits.seconds + 30)
            except NotApplicable as exc:
                series.status, series.note = "n/a", str(exc)
                return series
            except Deadlock as exc:
                series.status, series.note = "deadlock", str(exc)
            except Aborted as exc:
                series.status, series.note = "aborted", str(exc)
            except (WorkloadTimeout, TimeoutError) as exc:
                series.status = "timeout"
                series.note = str(exc) or f"still running after {limits.seconds:g} s"
            except Exception as exc:
                series.status = "error"
                series.note = f"{type(exc).__name__}: {exc}"[:1500]
                say(traceback.format_exc())
            else:
                series.samples.append(sample)
                last = time.monotonic() - started
                say(f"  {name} run {run + 1}: {last:.3f} s")
                continue
            say(f"  {name} run {run + 1}: {series.status.upper()} ({series.note}); resetting")
            await peer.reset()
            if series.samples:
                # Earlier runs finished: their figures stand, and the failure is noted.
                series.note = f"run {run + 1}: {series.status}: {series.note}"
                series.status = "ok"
            return series
        return series

    async def run(self) -> None:
        peer, ctx = self.peer, self.ctx
        say(f"== {self.label or peer.system}: starting")
        await peer.start()
        try:
            await asyncio.wait_for(peer.warm_up(), ctx.limit + 30)
            for workload in WORKLOADS:
                if workload not in ctx.workloads:
                    continue
                variants = peer.nested_variants if workload in (W3, W4, DAG) else ("",)
                for variant in variants:
                    started = time.monotonic()
                    series = await self.one(workload, variant)
                    self.emit(workload, variant, series, time.monotonic() - started)
        finally:
            await peer.stop()


def parse_child_args(argv: Sequence[str] | None = None) -> Context:
    parser = argparse.ArgumentParser(description="one system of benchmarks.compare (internal)")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--sizes", required=True, help="JSON of Sizes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--stall", type=float, default=10.0)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--label")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--logs", help="folder for the logs of the processes it starts")
    args = parser.parse_args(argv)
    if args.logs:
        logs = Path(args.logs)
        logs.mkdir(parents=True, exist_ok=True)
    else:
        logs = Path(tempfile.mkdtemp(prefix="girder-compare-"))
        own_logs[0] = logs
    ctx = Context(
        redis_url=args.redis,
        sizes=Sizes.from_json(json.loads(args.sizes)),
        runs=args.runs,
        limit=args.time_limit,
        stall=args.stall,
        workloads=[w for w in args.workloads.split(",") if w],
        workers=args.workers,
        logs=logs,
        quick=args.quick,
        label=args.label,
    )
    return ctx


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: unwind like Ctrl-C so that every `finally` stops its processes."""
    raise KeyboardInterrupt


own_logs: list[Path | None] = [None]
"""The log folder this process made itself (no `--logs`): removed at the end."""


def child_main(make_peer: Callable[[Context], Peer], argv: Sequence[str] | None = None) -> None:
    """Entry point of one system's process."""
    signal.signal(signal.SIGTERM, _terminate)
    ctx = parse_child_args(argv)
    os.environ.update(child_env(ctx.redis_url))
    try:
        peer = make_peer(ctx)
        asyncio.run(Driver(peer, ctx, ctx.label).run())
    finally:
        if own_logs[0] is not None:
            shutil.rmtree(own_logs[0], ignore_errors=True)
