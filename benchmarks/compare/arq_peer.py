"""arq: two arq worker processes (asyncio, `arq.worker.run_worker`), Redis as queue and result
store, and an `ArqRedis` client in this process.

arq has no nested-call primitive: a job enqueues its children with `ctx["redis"].enqueue_job`
and polls their results. A waiting parent keeps one of its worker's `max_jobs` slots, so
nesting deadlocks once every slot holds a waiting parent. Two variants are measured:

- `max_jobs=1100`: enough slots on each worker for every waiting parent of these workloads
  (tree(10) has 1,023 interior nodes; the DAG 200 + 600): what a user must configure, knowing
  the shape of the call graph, to make nesting work at all;
- `max_jobs=10`: arq's default, where the stall watch sees the deadlock.

The version is arq 0.25: every later release caps redis-py below 6, which Celery >= 5.5 (kombu)
and girder do not allow. Two things are adapted for it, both in arq's favour: results are
polled the way arq >= 0.26's `Job.result` does it (`job_result`: 0.25's has a race), and the
worker's connection cap is lifted (`on_startup`). Polling intervals are arq's main cost; the
values below were the fastest of a few tried on this machine (see `POLL_*`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import sys
import time
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name, result_key_prefix
from arq.jobs import Job, ResultNotFound, SerializationError, deserialize_result

from benchmarks.compare.common import (
    CacheResult,
    Context,
    DagResult,
    Deadlock,
    Limits,
    Peer,
    StallWatch,
    child_env,
    flush_redis,
    redis_dbsize_probe,
    timed_calls_async,
)
from benchmarks.compare.workloads import (
    COUNTER_URL_ENV,
    DagShape,
    burn,
    count_execution,
    read_executions,
    tree_value,
)
from benchmarks.harness import Children, fresh_tag

POLL_WORKER = float(os.environ.get("COMPARE_ARQ_POLL_WORKER", "0.005"))
"""Worker's queue poll interval (arq's default: 0.5 s)."""
POLL_CLIENT = float(os.environ.get("COMPARE_ARQ_POLL_CLIENT", "0.002"))
"""The client's result poll interval (arq's default: 0.5 s)."""
POLL_NESTED = float(os.environ.get("COMPARE_ARQ_POLL_NESTED", "0.02"))
"""A parent job's poll interval for its children's results."""
MAX_JOBS_ENV = "COMPARE_ARQ_MAX_JOBS"
BIG = "max_jobs=1100"
DEFAULT = "max_jobs=10"
MAX_JOBS = {BIG: 1100, DEFAULT: 10}
ENQUEUE_CONCURRENCY = 32
"""Enqueues in flight at once when submitting many jobs (each is a WATCH/MULTI/EXEC)."""


# -- polling ------------------------------------------------------------------------------------


async def job_result(
    redis: ArqRedis, job_id: str, poll_delay: float, timeout: float | None = None
) -> Any:
    """`Job.result` as arq >= 0.26 has it: GET the result and ZSCORE the queue in one MULTI.

    arq 0.25's `Job.result` sends the two commands separately, and raises `ResultNotFound`
    when the job finishes between them (seen here within a few hundred jobs). Same polling,
    one round trip per poll instead of two.
    """
    started = time.monotonic()
    while True:
        async with redis.pipeline(transaction=True) as tr:
            tr.get(result_key_prefix + job_id)
            tr.zscore(default_queue_name, job_id)
            value, score = await tr.execute()
        if value:
            info = deserialize_result(value)
            if info.success:
                return info.result
            if isinstance(info.result, BaseException):
                raise info.result
            raise SerializationError(info.result)
        if score is None:
            raise ResultNotFound(f"job {job_id} is neither queued nor finished")
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError
        await asyncio.sleep(poll_delay)


# -- jobs ---------------------------------------------------------------------------------------


async def children(ctx: dict[str, Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    """Enqueue the children and poll their results: arq's way to nest."""
    redis: ArqRedis = ctx["redis"]
    jobs = [await redis.enqueue_job(name, *args) for name, *args in calls]
    return [await job_result(redis, job.job_id, POLL_NESTED) for job in jobs if job is not None]


async def echo(ctx: dict[str, Any], tag: str, index: int) -> int:
    return index


async def square(ctx: dict[str, Any], tag: str, x: int) -> int:
    return x * x


async def tree(ctx: dict[str, Any], depth: int, index: int, tag: str) -> int:
    if depth == 0:
        return 1
    left, right = await children(
        ctx, [("tree", depth - 1, 2 * index, tag), ("tree", depth - 1, 2 * index + 1, tag)]
    )
    return int(left) + int(right) + 1


async def chain(ctx: dict[str, Any], n: int, tag: str) -> int:
    if n == 0:
        return 0
    (below,) = await children(ctx, [("chain", n - 1, tag)])
    return int(below) + 1


async def dag_leaf(ctx: dict[str, Any], leaf: int, shape: list[Any], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    burn(dag.work_ms)
    count_execution(tag)
    return dag.leaf_value(leaf)


async def dag_mid(ctx: dict[str, Any], mid: int, shape: list[Any], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    values = await children(ctx, [("dag_leaf", k, shape, tag) for k in dag.leaves_of(mid)])
    burn(dag.work_ms)
    count_execution(tag)
    return mid + sum(int(v) for v in values)


async def dag_top(ctx: dict[str, Any], top: int, shape: list[Any], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    values = await children(ctx, [("dag_mid", j, shape, tag) for j in dag.mids_of(top)])
    burn(dag.work_ms)
    count_execution(tag)
    return top + sum(int(v) for v in values)


READY_KEY = "compare:arq:ready"


POOL_CONNECTIONS = 10_000


async def on_startup(ctx: dict[str, Any]) -> None:
    """Lift the connection cap and tell the harness this worker is up.

    arq 0.25 predates redis-py 6, whose asyncio pools hold at most 100 connections by default
    (before: 2**31); with 1,100 jobs at once polling, the worker would fail with
    MaxConnectionsError. arq 0.25 has no setting for it, so it is raised here.
    """
    ctx["redis"].connection_pool.max_connections = POOL_CONNECTIONS
    await ctx["redis"].incr(READY_KEY)


class WorkerSettings:
    """What each `run_worker` process uses (the Redis URL and max_jobs from its environment)."""

    functions: ClassVar[list[Any]] = [echo, square, tree, chain, dag_leaf, dag_mid, dag_top]
    redis_settings = RedisSettings.from_dsn(os.environ.get(COUNTER_URL_ENV, "redis://unset:1"))
    max_jobs = int(os.environ.get(MAX_JOBS_ENV, "10"))
    poll_delay = POLL_WORKER
    job_timeout = 3600
    keep_result = 3600
    max_tries = 1
    handle_signals = True
    on_startup = on_startup


WORKER_COMMAND = (
    "from arq.worker import run_worker; "
    "from benchmarks.compare.arq_peer import WorkerSettings; "
    "run_worker(WorkerSettings)"
)


# -- the peer -----------------------------------------------------------------------------------


class ArqPeer(Peer):
    system = "arq"
    nested_variants = (BIG, DEFAULT)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.children: Children | None = None
        self.redis: ArqRedis | None = None
        self.max_jobs = MAX_JOBS[BIG]
        self.probe = redis_dbsize_probe(ctx.redis_url)

    def settings(self) -> dict[str, Any]:
        return {
            "workers": (
                f"{self.ctx.workers} x arq worker process (run_worker, no per-job log lines), "
                f"poll_delay={POLL_WORKER} s, max_jobs 1100 (or 10 where the variant says), "
                "keep_result 3600 s, max_tries 1"
            ),
            "client": f"ArqRedis; results polled every {POLL_CLIENT} s; "
            f"{ENQUEUE_CONCURRENCY} enqueues in flight when submitting many",
            "nested": f"enqueue_job from the job, then poll the child's result every "
            f"{POLL_NESTED} s",
            "results": "polled as arq >= 0.26's Job.result does (one MULTI of GET and ZSCORE): "
            "arq 0.25's Job.result has a race that raises ResultNotFound",
            "connections": "worker pool cap raised to 10,000 (redis-py >= 6 caps asyncio pools at "
            "100, below 1,100 jobs at once; arq 0.25 has no setting for it)",
        }

    def versions(self) -> dict[str, str]:
        return {p: importlib.metadata.version(p) for p in ("arq", "redis")}

    async def start(self) -> None:
        env = child_env(self.ctx.redis_url) | {MAX_JOBS_ENV: str(self.max_jobs)}
        children = Children(env, self.ctx.logs)
        self.children = children
        for index in range(self.ctx.workers):
            children.start(f"arq-w{index + 1}", [sys.executable, "-c", WORKER_COMMAND])
        self.redis = await create_pool(RedisSettings.from_dsn(self.ctx.redis_url))
        await self.r.delete(READY_KEY)
        deadline = time.monotonic() + 60
        while int(await self.r.get(READY_KEY) or 0) < self.ctx.workers:
            if dead := children.dead():
                raise RuntimeError(f"{dead} exited at start-up\n{children.tail(dead)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"arq workers not ready\n{children.tail()}")
            await asyncio.sleep(0.05)

    async def stop(self, kill: bool = False) -> None:
        if self.redis is not None:
            redis, self.redis = self.redis, None
            await redis.aclose()
        if self.children is not None:
            children, self.children = self.children, None
            await asyncio.to_thread(children.close, 3.0, kill)

    async def reset(self) -> None:
        await self.stop(kill=True)
        flush_redis(self.ctx.redis_url)
        await self.start()

    async def configure(self, variant: str) -> None:
        """Restart the workers with the variant's max_jobs if it differs."""
        wanted = MAX_JOBS[variant or BIG]
        if wanted != self.max_jobs:
            await self.stop()
            self.max_jobs = wanted
            await self.start()

    @property
    def r(self) -> ArqRedis:
        assert self.redis is not None, "arq is not started"
        return self.redis

    async def enqueue_many(self, calls: list[tuple[Any, ...]]) -> list[Job]:
        gate = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

        async def one(call: tuple[Any, ...]) -> Job:
            async with gate:
                job = await self.r.enqueue_job(*call)
            assert job is not None
            return job

        return list(await asyncio.gather(*(one(call) for call in calls)))

    async def results(self, jobs: list[Job], limits: Limits, what: str) -> list[Any]:
        """Every job's result, polling; `Deadlock` when no key changes for the stall period."""
        watch = StallWatch(limits, self.probe, what)
        values = []
        for job in jobs:
            while True:
                try:
                    values.append(await job_result(self.r, job.job_id, POLL_CLIENT, 0.5))
                    break
                except TimeoutError:
                    watch.check()
        return values

    async def warm_up(self) -> None:
        tag = fresh_tag("warm")
        limits = Limits(60, 30)
        await self.results(
            await self.enqueue_many([("echo", tag, i) for i in range(200)]), limits, "warm-up"
        )
        await self.results(await self.enqueue_many([("tree", 3, 0, tag)]), limits, "warm-up")

    async def w1(self, calls: int, warmup: int, limits: Limits) -> list[float]:
        tag = fresh_tag("w1")

        async def call(i: int) -> Any:
            job = await self.r.enqueue_job("echo", tag, i)
            assert job is not None
            return await job_result(self.r, job.job_id, POLL_CLIENT, limits.seconds)

        for i in range(warmup):
            await call(-1 - i)
        return await timed_calls_async(call, calls, lambda i: i, limits)

    async def w2(self, calls: int, limits: Limits) -> float:
        tag = fresh_tag("w2")
        start = time.perf_counter()
        jobs = await self.enqueue_many([("echo", tag, i) for i in range(calls)])
        values = await self.results(jobs, limits, "W2")
        seconds = time.perf_counter() - start
        assert values == list(range(calls))
        return seconds

    async def nested(self, variant: str, call: tuple[Any, ...], limits: Limits, what: str) -> Any:
        await self.configure(variant)
        job = await self.r.enqueue_job(*call)
        assert job is not None
        (value,) = await self.results([job], limits, what)
        return value

    async def w3(self, variant: str, depth: int, limits: Limits) -> float:
        await self.configure(variant)
        start = time.perf_counter()
        value = await self.nested(variant, ("tree", depth, 0, fresh_tag("w3")), limits, "W3")
        seconds = time.perf_counter() - start
        assert value == tree_value(depth), value
        return seconds

    async def w4(self, variant: str, depth: int, limits: Limits) -> float:
        await self.configure(variant)
        start = time.perf_counter()
        value = await self.nested(variant, ("chain", depth, fresh_tag("w4")), limits, "W4")
        seconds = time.perf_counter() - start
        assert value == depth, value
        return seconds

    async def cache(self, calls: int, limits: Limits) -> CacheResult:
        await self.configure(BIG)
        tag = fresh_tag("cache")
        job_id = f"square-{tag}-7"
        first = await self.r.enqueue_job("square", tag, 7, _job_id=job_id)
        assert first is not None
        assert await job_result(self.r, job_id, POLL_CLIENT, limits.seconds) == 49

        async def call(_: int) -> Any:
            again = await self.r.enqueue_job("square", tag, 7, _job_id=job_id)
            assert again is None, "arq ran a duplicate job id"
            return await job_result(self.r, job_id, POLL_CLIENT, limits.seconds)

        samples = await timed_calls_async(call, calls, lambda _: 49)
        return CacheResult(
            samples,
            closest="enqueue_job with the first call's _job_id (arq refuses the duplicate "
            "while the result is kept) then read that stored result; with the default random "
            "job ids a repeated call runs again",
        )

    async def dag(self, variant: str, shape: DagShape, limits: Limits) -> DagResult:
        await self.configure(variant)
        tag = fresh_tag("dag")
        top = list(shape.as_tuple())
        start = time.perf_counter()
        jobs = await self.enqueue_many([("dag_top", i, top, tag) for i in range(shape.tops)])
        try:
            values = await self.results(jobs, limits, "dag")
        except Deadlock as exc:
            raise Deadlock(f"{exc}; {read_executions(self.ctx.redis_url, tag)} executions") from exc
        seconds = time.perf_counter() - start
        assert values == shape.expected()
        return DagResult(seconds, read_executions(self.ctx.redis_url, tag))


PEER = ArqPeer
