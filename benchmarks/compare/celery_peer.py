"""Celery: two `celery worker` processes, Redis as broker and result backend.

Nested calls, two ways:

- `canvas` (what Celery's documentation recommends instead of waiting in a task): the call
  graph is rewritten as a canvas built by the client: W3 is nested chords (each node is a
  chord of its two children with a join as body), W4 a `chain` of 201 linked tasks, the DAG a
  group of 200 chords of chords. Each call's children are spelled out per call, so nothing is
  shared between requests.
- `blocking-get`: a task calls its children with `.delay()` and waits with
  `.get(disable_sync_subtasks=False)`, the way the documentation warns against. With two
  worker processes each running one task at a time, the waiting parents occupy every worker
  while their children wait in the queue: a deadlock, which the stall watch detects (no key
  appears in Redis for the stall period); the workers are then killed and restarted.

This module is also the Celery app that the workers load (`-A benchmarks.compare.celery_peer`).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult, GroupResult

from benchmarks.compare.common import (
    CacheResult,
    Context,
    DagResult,
    Limits,
    NotApplicable,
    Peer,
    StallWatch,
    WorkloadTimeout,
    child_env,
    flush_redis,
    redis_dbsize_probe,
    timed_calls,
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

QUEUE = "compare"
POOL = os.environ.get("COMPARE_CELERY_POOL", "solo")
INNER_TIMEOUT = 600.0
"""The blocking-get tasks' own wait limit: only a backstop, the workers are killed long before."""

# The harness's throw-away redis-server; a worker gets it in its environment, the client sets it
# in `CeleryPeer.__init__` (this module is imported before the environment is set there).
app = Celery(
    "compare", broker=os.environ.get(COUNTER_URL_ENV), backend=os.environ.get(COUNTER_URL_ENV)
)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=False,
    worker_prefetch_multiplier=int(os.environ.get("COMPARE_CELERY_PREFETCH", "4")),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_extended=False,
    task_track_started=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


# -- tasks --------------------------------------------------------------------------------------


@app.task
def echo(index: int) -> int:
    return index


@app.task
def square(x: int) -> int:
    return x * x


@app.task
def tree_leaf() -> int:
    return 1


@app.task
def tree_join(values: list[int]) -> int:
    return sum(values) + 1


@app.task
def chain_start() -> int:
    return 0


@app.task
def chain_step(below: int) -> int:
    return below + 1


@app.task
def tree_blocking(depth: int, index: int) -> int:
    if depth == 0:
        return 1
    children = [
        tree_blocking.delay(depth - 1, 2 * index),
        tree_blocking.delay(depth - 1, 2 * index + 1),
    ]
    return sum(int(c.get(disable_sync_subtasks=False, timeout=INNER_TIMEOUT)) for c in children) + 1


@app.task
def chain_blocking(n: int) -> int:
    if n == 0:
        return 0
    below = chain_blocking.delay(n - 1)
    return int(below.get(disable_sync_subtasks=False, timeout=INNER_TIMEOUT)) + 1


@app.task
def dag_leaf(leaf: int, shape: list[Any], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    burn(dag.work_ms)
    count_execution(tag)
    return dag.leaf_value(leaf)


@app.task
def dag_join(values: list[int], node: int, shape: list[Any], tag: str) -> int:
    """The body of a mid's or a top's chord: its own work once its inputs are in."""
    burn(DagShape.from_tuple(shape).work_ms)
    count_execution(tag)
    return node + sum(values)


@app.task
def dag_mid_blocking(mid: int, shape: list[Any], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    leaves = [dag_leaf.delay(k, shape, tag) for k in dag.leaves_of(mid)]
    values = [int(r.get(disable_sync_subtasks=False, timeout=INNER_TIMEOUT)) for r in leaves]
    burn(dag.work_ms)
    count_execution(tag)
    return mid + sum(values)


@app.task
def dag_top_blocking(top: int, shape: list[Any], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    mids = [dag_mid_blocking.delay(j, shape, tag) for j in dag.mids_of(top)]
    values = [int(r.get(disable_sync_subtasks=False, timeout=INNER_TIMEOUT)) for r in mids]
    burn(dag.work_ms)
    count_execution(tag)
    return top + sum(values)


# -- canvases -----------------------------------------------------------------------------------


def tree_canvas(depth: int) -> Signature:
    if depth == 0:
        return tree_leaf.s()
    return chord([tree_canvas(depth - 1), tree_canvas(depth - 1)], tree_join.s())


def chain_canvas(depth: int) -> Signature:
    return chain(chain_start.s(), *[chain_step.s() for _ in range(depth)])


def dag_canvas(shape: DagShape, tag: str) -> Signature:
    top = list(shape.as_tuple())

    def mid(j: int) -> Signature:
        return chord([dag_leaf.s(k, top, tag) for k in shape.leaves_of(j)], dag_join.s(j, top, tag))

    return group(
        chord([mid(j) for j in shape.mids_of(i)], dag_join.s(i, top, tag))
        for i in range(shape.tops)
    )


# -- the peer -----------------------------------------------------------------------------------


class CeleryPeer(Peer):
    system = "celery"
    nested_variants = ("canvas", "blocking-get")

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        app.conf.broker_url = ctx.redis_url
        app.conf.result_backend = ctx.redis_url
        self.children: Children | None = None
        self.names = [f"cw{i + 1}" for i in range(ctx.workers)]
        self.probe = redis_dbsize_probe(ctx.redis_url)

    def settings(self) -> dict[str, Any]:
        pool = "-P solo" if POOL == "solo" else f"-P {POOL} --concurrency 1"
        return {
            "workers": (
                f"{self.ctx.workers} x `celery worker {pool} --without-heartbeat "
                "--without-gossip --without-mingle -l WARNING`"
            ),
            "broker": "redis (loopback TCP)",
            "result_backend": "redis (same server)",
            "serializer": "json",
            "task_acks_late": False,
            "worker_prefetch_multiplier": app.conf.worker_prefetch_multiplier,
            "nested": {
                "canvas": "client-built canvas: nested chords (W3), chain (W4), group of chords "
                "of chords (DAG)",
                "blocking-get": "child.delay() then .get(disable_sync_subtasks=False) in the task",
            },
        }

    def versions(self) -> dict[str, str]:
        return {p: importlib.metadata.version(p) for p in ("celery", "kombu", "redis")}

    async def start(self) -> None:
        children = Children(child_env(self.ctx.redis_url), self.ctx.logs)
        self.children = children
        pool = ["-P", "solo"] if POOL == "solo" else ["-P", POOL, "--concurrency", "1"]
        for name in self.names:
            children.start(
                f"celery-{name}",
                [sys.executable, "-m", "celery", "-A", "benchmarks.compare.celery_peer",
                 "worker", *pool, "-Q", QUEUE, "-n", f"{name}@%h", "-l", "WARNING",
                 "--without-heartbeat", "--without-gossip", "--without-mingle"],
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if dead := children.dead():
                raise RuntimeError(f"{dead} exited at start-up\n{children.tail(dead)}")
            replies = app.control.ping(timeout=0.5)
            if len(replies) >= len(self.names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery workers not ready\n{children.tail()}")

    async def stop(self) -> None:
        if self.children is not None:
            children, self.children = self.children, None
            # A worker stuck in a blocking .get() never finishes its task: short grace.
            children.close(grace=3.0)

    async def reset(self) -> None:
        if self.children is not None:
            children, self.children = self.children, None
            children.close(kill=True)
        flush_redis(self.ctx.redis_url)
        await self.start()

    # -- waiting ------------------------------------------------------------------------------

    def wait(self, result: AsyncResult | GroupResult, limits: Limits, what: str) -> Any:
        """The result's value; `Deadlock` when Redis sees no new key for the stall period."""
        watch = StallWatch(limits, self.probe, what)
        while True:
            try:
                return result.get(timeout=0.5, interval=0.005)
            except CeleryTimeout:
                watch.check()

    @staticmethod
    def get(result: AsyncResult | GroupResult, limits: Limits) -> Any:
        try:
            return result.get(timeout=limits.seconds, interval=0.005)
        except CeleryTimeout as exc:
            raise WorkloadTimeout(f"still running after {limits.seconds:g} s") from exc

    async def warm_up(self) -> None:
        limits = Limits(60, 30)
        self.get(group(echo.s(i) for i in range(200)).apply_async(), limits)
        self.wait(tree_canvas(3).apply_async(), limits, "warm-up")
        self.wait(chain_canvas(10).apply_async(), limits, "warm-up")

    # -- workloads ----------------------------------------------------------------------------

    async def w1(self, calls: int, warmup: int, limits: Limits) -> list[float]:
        for i in range(warmup):
            self.get(echo.delay(-1 - i), limits)
        return timed_calls(
            lambda i: echo.delay(i).get(timeout=limits.seconds), calls, lambda i: i, limits
        )

    async def w2(self, calls: int, limits: Limits) -> float:
        start = time.perf_counter()
        values = self.get(group(echo.s(i) for i in range(calls)).apply_async(), limits)
        seconds = time.perf_counter() - start
        assert values == list(range(calls))
        return seconds

    async def w3(self, variant: str, depth: int, limits: Limits) -> float:
        start = time.perf_counter()
        if variant == "canvas":
            result = tree_canvas(depth).apply_async()
        else:
            result = tree_blocking.delay(depth, 0)
        value = self.wait(result, limits, f"tree({depth})")
        seconds = time.perf_counter() - start
        assert value == tree_value(depth), value
        return seconds

    async def w4(self, variant: str, depth: int, limits: Limits) -> float:
        start = time.perf_counter()
        if variant == "canvas":
            result = chain_canvas(depth).apply_async()
        else:
            result = chain_blocking.delay(depth)
        value = self.wait(result, limits, f"chain({depth})")
        seconds = time.perf_counter() - start
        assert value == depth, value
        return seconds

    async def cache(self, calls: int, limits: Limits) -> CacheResult:
        raise NotApplicable(
            "Celery has no memoization: a repeated call runs again (see W1); a stored "
            "result can only be re-read by task id"
        )

    async def dag(self, variant: str, shape: DagShape, limits: Limits) -> DagResult:
        tag = fresh_tag("dag")
        top = list(shape.as_tuple())
        start = time.perf_counter()
        if variant == "canvas":
            result = dag_canvas(shape, tag).apply_async()
        else:
            result = group(dag_top_blocking.s(i, top, tag) for i in range(shape.tops)).apply_async()
        values = self.wait(result, limits, "dag")
        seconds = time.perf_counter() - start
        assert values == shape.expected()
        return DagResult(seconds, read_executions(self.ctx.redis_url, tag))


PEER = CeleryPeer
