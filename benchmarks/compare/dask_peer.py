"""Dask distributed: `LocalCluster(n_workers=2, threads_per_worker=1, processes=True)` and a
`Client` in this process. Dask does not use Redis (only the DAG's execution counter does).

Nested calls use Dask's documented way for tasks that launch tasks: `worker_client()`, which
secedes the task's thread from the worker's pool while it waits for its children and rejoins
afterwards (so a waiting parent holds an OS thread, not a pool slot).

Dask names a task by a hash of its function and arguments (`pure=True`, the default), and the
scheduler runs one task per key while anyone holds a future of it. That is real in-flight
de-duplication, so the DAG workload counts what Dask actually executed.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from typing import Any

from dask.distributed import Client, Future, LocalCluster, wait, worker_client

from benchmarks.compare.common import (
    CacheResult,
    Context,
    DagResult,
    Limits,
    Peer,
    WorkloadTimeout,
    timed_calls,
)
from benchmarks.compare.workloads import (
    DagShape,
    burn,
    count_execution,
    read_executions,
    tree_value,
)
from benchmarks.harness import fresh_tag

# -- tasks --------------------------------------------------------------------------------------


def echo(tag: str, index: int) -> int:
    return index


def square(tag: str, x: int) -> int:
    return x * x


def tree(depth: int, index: int, tag: str) -> int:
    if depth == 0:
        return 1
    with worker_client() as client:
        children = [
            client.submit(tree, depth - 1, 2 * index, tag),
            client.submit(tree, depth - 1, 2 * index + 1, tag),
        ]
        left, right = client.gather(children)
    return int(left) + int(right) + 1


def chain(n: int, tag: str) -> int:
    if n == 0:
        return 0
    with worker_client() as client:
        below = client.submit(chain, n - 1, tag).result()
    return int(below) + 1


def dag_leaf(leaf: int, shape: tuple[int, int, int, int, float], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    burn(dag.work_ms)
    count_execution(tag)
    return dag.leaf_value(leaf)


def dag_mid(mid: int, shape: tuple[int, int, int, int, float], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    with worker_client() as client:
        values = client.gather([client.submit(dag_leaf, k, shape, tag) for k in dag.leaves_of(mid)])
    burn(dag.work_ms)
    count_execution(tag)
    return mid + sum(int(v) for v in values)


def dag_top(top: int, shape: tuple[int, int, int, int, float], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    with worker_client() as client:
        values = client.gather([client.submit(dag_mid, j, shape, tag) for j in dag.mids_of(top)])
    burn(dag.work_ms)
    count_execution(tag)
    return top + sum(int(v) for v in values)


# -- the peer -----------------------------------------------------------------------------------


class DaskPeer(Peer):
    system = "dask"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "cluster": (
                f"LocalCluster(n_workers={self.ctx.workers}, threads_per_worker=1, "
                "processes=True, host='127.0.0.1', dashboard_address=None)"
            ),
            "client": "distributed.Client (sync API) in the harness process",
            "nested": "worker_client() (secede / rejoin) inside the task",
            "keys": "pure=True (default): one task per (function, arguments) while held",
        }

    def versions(self) -> dict[str, str]:
        return {p: importlib.metadata.version(p) for p in ("dask", "distributed")}

    async def start(self) -> None:
        self.cluster = LocalCluster(
            n_workers=self.ctx.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)

    async def stop(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        done = threading.Event()

        def close() -> None:
            try:
                if client is not None:
                    client.close(timeout=10)
                if cluster is not None:
                    cluster.close(timeout=10)
            except Exception:  # the harness kills the process group anyway
                pass
            finally:
                done.set()

        threading.Thread(target=close, daemon=True).start()
        done.wait(30)

    @property
    def c(self) -> Client:
        assert self.client is not None, "dask is not started"
        return self.client

    def gather(self, futures: list[Future[Any]], limits: Limits, what: str) -> list[Any]:
        try:
            wait(futures, timeout=limits.seconds)
        except TimeoutError as exc:
            raise WorkloadTimeout(f"{what}: still running after {limits.seconds:g} s") from exc
        values: list[Any] = self.c.gather(futures)
        return values

    async def warm_up(self) -> None:
        tag = fresh_tag("warm")
        limits = Limits(60, 30)
        self.gather(self.c.map(echo, [tag] * 200, range(200)), limits, "warm-up")
        self.gather([self.c.submit(tree, 3, 0, tag)], limits, "warm-up")
        self.gather([self.c.submit(chain, 10, tag)], limits, "warm-up")

    async def w1(self, calls: int, warmup: int, limits: Limits) -> list[float]:
        tag = fresh_tag("w1")
        for i in range(warmup):
            self.c.submit(echo, tag, -1 - i).result(timeout=limits.seconds)

        def call(i: int) -> object:
            return self.c.submit(echo, tag, i).result(timeout=limits.seconds)

        return timed_calls(call, calls, lambda i: i, limits)

    async def w2(self, calls: int, limits: Limits) -> float:
        tag = fresh_tag("w2")
        start = time.perf_counter()
        values = self.gather(self.c.map(echo, [tag] * calls, range(calls)), limits, "W2")
        seconds = time.perf_counter() - start
        assert values == list(range(calls))
        return seconds

    async def w3(self, variant: str, depth: int, limits: Limits) -> float:
        start = time.perf_counter()
        (value,) = self.gather([self.c.submit(tree, depth, 0, fresh_tag("w3"))], limits, "W3")
        seconds = time.perf_counter() - start
        assert value == tree_value(depth), value
        return seconds

    async def w4(self, variant: str, depth: int, limits: Limits) -> float:
        start = time.perf_counter()
        (value,) = self.gather([self.c.submit(chain, depth, fresh_tag("w4"))], limits, "W4")
        seconds = time.perf_counter() - start
        assert value == depth, value
        return seconds

    async def cache(self, calls: int, limits: Limits) -> CacheResult:
        tag = fresh_tag("cache")
        held = self.c.submit(square, tag, 7)
        assert held.result(timeout=limits.seconds) == 49

        def call(_: int) -> object:
            return self.c.submit(square, tag, 7).result(timeout=limits.seconds)

        samples = timed_calls(call, calls, lambda _: 49)
        del held
        return CacheResult(
            samples,
            closest="re-submit of the same pure call while its first future is still held "
            "(the client hands back that future; once released, Dask computes it again)",
        )

    async def dag(self, variant: str, shape: DagShape, limits: Limits) -> DagResult:
        tag = fresh_tag("dag")
        top = shape.as_tuple()
        start = time.perf_counter()
        futures = [self.c.submit(dag_top, i, top, tag) for i in range(shape.tops)]
        values = self.gather(futures, limits, "dag")
        seconds = time.perf_counter() - start
        assert values == shape.expected()
        return DagResult(seconds, read_executions(self.ctx.redis_url, tag))


PEER = DaskPeer
