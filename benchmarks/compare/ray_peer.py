"""Ray: a local Ray instance started by `ray.init(num_cpus=2)` (two task slots; Ray pre-starts
one worker process per slot), bound to 127.0.0.1. Ray does not use Redis (only the DAG's
execution counter does).

Nested calls, two ways:

- `ray.get`: a task calls `.remote()` on its children and waits with `ray.get` inside the task
  (Ray's "nested tasks" pattern). A task blocked in `ray.get` gives its CPU slot back, and Ray
  starts another worker process to use it, so a deep or wide nesting starts many processes;
  the most worker processes seen during the workload is reported (`ray_worker_processes_max`).
- `refs`: the client builds the graph and passes `ObjectRef`s as arguments (Ray's advice to
  avoid `ray.get` in tasks); every top-level call spells out its own graph, nothing is shared.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from typing import Any

import psutil
import ray
from ray.exceptions import GetTimeoutError

from benchmarks.compare.common import (
    Aborted,
    CacheResult,
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

Shape = tuple[int, int, int, int, float]

# -- tasks --------------------------------------------------------------------------------------


@ray.remote
def echo(tag: str, index: int) -> int:
    return index


@ray.remote
def square(tag: str, x: int) -> int:
    return x * x


@ray.remote
def tree(depth: int, index: int, tag: str) -> int:
    if depth == 0:
        return 1
    left, right = ray.get(
        [tree.remote(depth - 1, 2 * index, tag), tree.remote(depth - 1, 2 * index + 1, tag)]
    )
    return int(left) + int(right) + 1


@ray.remote
def chain(n: int, tag: str) -> int:
    if n == 0:
        return 0
    return int(ray.get(chain.remote(n - 1, tag))) + 1


@ray.remote
def tree_leaf() -> int:
    return 1


@ray.remote
def tree_join(left: int, right: int) -> int:
    return left + right + 1


@ray.remote
def chain_start() -> int:
    return 0


@ray.remote
def chain_step(below: int) -> int:
    return below + 1


@ray.remote
def dag_leaf(leaf: int, shape: Shape, tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    burn(dag.work_ms)
    count_execution(tag)
    return dag.leaf_value(leaf)


@ray.remote
def dag_join(node: int, shape: Shape, tag: str, *values: int) -> int:
    """A mid's or a top's own work once its inputs are in (the `refs` variant)."""
    burn(DagShape.from_tuple(shape).work_ms)
    count_execution(tag)
    return node + sum(values)


@ray.remote
def dag_mid(mid: int, shape: Shape, tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    values = ray.get([dag_leaf.remote(k, shape, tag) for k in dag.leaves_of(mid)])
    burn(dag.work_ms)
    count_execution(tag)
    return mid + sum(int(v) for v in values)


@ray.remote
def dag_top(top: int, shape: Shape, tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    values = ray.get([dag_mid.remote(j, shape, tag) for j in dag.mids_of(top)])
    burn(dag.work_ms)
    count_execution(tag)
    return top + sum(int(v) for v in values)


def tree_refs(depth: int) -> Any:
    if depth == 0:
        return tree_leaf.remote()
    return tree_join.remote(tree_refs(depth - 1), tree_refs(depth - 1))


def chain_refs(depth: int) -> Any:
    ref = chain_start.remote()
    for _ in range(depth):
        ref = chain_step.remote(ref)
    return ref


def dag_refs(shape: DagShape, tag: str) -> list[Any]:
    top = shape.as_tuple()

    def mid(j: int) -> Any:
        return dag_join.remote(
            j, top, tag, *[dag_leaf.remote(k, top, tag) for k in shape.leaves_of(j)]
        )

    return [
        dag_join.remote(i, top, tag, *[mid(j) for j in shape.mids_of(i)]) for i in range(shape.tops)
    ]


# -- counting Ray's worker processes ------------------------------------------------------------


AGENTS = frozenset({"ray::DashboardAgent", "ray::RuntimeEnvAgent"})
MAX_WORKER_PROCESSES = 80
"""The harness stops a nested workload once Ray runs this many worker processes (each is a
Python interpreter of about 100 MB: this machine is shared)."""


def ray_worker_processes() -> tuple[int, int]:
    """Ray's worker processes (titled `ray::IDLE` or `ray::<task>`): how many, and their RSS."""
    count = rss = 0
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        title = " ".join(proc.info.get("cmdline") or []) or (proc.info.get("name") or "")
        if title.startswith("ray::") and title.split()[0] not in AGENTS:
            count += 1
            memory = proc.info.get("memory_info")
            rss += memory.rss if memory is not None else 0
    return count, rss


class ProcessWatch:
    """Samples Ray's worker processes in a thread; keeps the maximum, trips past the cap."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.most, self.most_rss = ray_worker_processes()
        self.tripped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        count, rss = ray_worker_processes()
        self.most = max(self.most, count)
        self.most_rss = max(self.most_rss, rss)
        self.tripped = self.tripped or count >= MAX_WORKER_PROCESSES

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# -- the peer -----------------------------------------------------------------------------------


class RayPeer(Peer):
    system = "ray"
    nested_variants = ("ray.get", "refs")

    def settings(self) -> dict[str, Any]:
        return {
            "cluster": (
                f"ray.init(num_cpus={self.ctx.workers}, include_dashboard=False, "
                "_node_ip_address='127.0.0.1'): local Ray, one worker process per CPU slot "
                "pre-started"
            ),
            "nested": {
                "ray.get": "child.remote() then ray.get() inside the task",
                "refs": "client-built graph: ObjectRefs passed as arguments",
            },
        }

    def versions(self) -> dict[str, str]:
        return {"ray": importlib.metadata.version("ray")}

    async def start(self) -> None:
        ray.init(
            num_cpus=self.ctx.workers,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )

    async def stop(self) -> None:
        ray.shutdown()

    def get(self, refs: Any, limits: Limits, what: str) -> Any:
        try:
            return ray.get(refs, timeout=limits.seconds)
        except GetTimeoutError as exc:
            raise WorkloadTimeout(f"{what}: still running after {limits.seconds:g} s") from exc

    async def warm_up(self) -> None:
        limits = Limits(60, 30)
        tag = fresh_tag("warm")
        self.get([echo.remote(tag, i) for i in range(200)], limits, "warm-up")
        self.get(tree_refs(3), limits, "warm-up")
        self.get(chain.remote(2, tag), limits, "warm-up")

    async def w1(self, calls: int, warmup: int, limits: Limits) -> list[float]:
        tag = fresh_tag("w1")
        for i in range(warmup):
            self.get(echo.remote(tag, -1 - i), limits, "W1")
        return timed_calls(
            lambda i: self.get(echo.remote(tag, i), limits, "W1"), calls, lambda i: i, limits
        )

    async def w2(self, calls: int, limits: Limits) -> float:
        tag = fresh_tag("w2")
        start = time.perf_counter()
        values = self.get([echo.remote(tag, i) for i in range(calls)], limits, "W2")
        seconds = time.perf_counter() - start
        assert values == list(range(calls))
        return seconds

    def nested(self, limits: Limits, what: str, make: Any) -> tuple[Any, float]:
        """Run a nested workload, watching how many worker processes Ray starts."""
        with ProcessWatch() as watch:
            try:
                start = time.perf_counter()
                refs = make()
                while True:
                    try:
                        value = ray.get(refs, timeout=0.5)
                        break
                    except GetTimeoutError:
                        if watch.tripped:
                            raise Aborted(
                                f"{what}: stopped by the harness after "
                                f"{time.perf_counter() - start:.1f} s: Ray had started "
                                f"{watch.most} worker processes "
                                f"({watch.most_rss / 2**30:.1f} GiB RSS) for the tasks "
                                "blocked in ray.get"
                            ) from None
                        if time.perf_counter() - start > limits.seconds:
                            raise WorkloadTimeout(
                                f"{what}: still running after {limits.seconds:g} s "
                                f"({watch.most} Ray worker processes)"
                            ) from None
                seconds = time.perf_counter() - start
            finally:
                self.extra = {
                    "ray_worker_processes_max": watch.most,
                    "ray_worker_rss_gib_max": round(watch.most_rss / 2**30, 2),
                }
        return value, seconds

    async def w3(self, variant: str, depth: int, limits: Limits) -> float:
        tag = fresh_tag("w3")
        make = (
            (lambda: tree.remote(depth, 0, tag))
            if variant == "ray.get"
            else (lambda: tree_refs(depth))
        )
        value, seconds = self.nested(limits, f"tree({depth})", make)
        assert value == tree_value(depth), value
        return seconds

    async def w4(self, variant: str, depth: int, limits: Limits) -> float:
        tag = fresh_tag("w4")
        make = (
            (lambda: chain.remote(depth, tag))
            if variant == "ray.get"
            else (lambda: chain_refs(depth))
        )
        value, seconds = self.nested(limits, f"chain({depth})", make)
        assert value == depth, value
        return seconds

    async def cache(self, calls: int, limits: Limits) -> CacheResult:
        ref = square.remote(fresh_tag("cache"), 7)
        assert self.get(ref, limits, "cache") == 49
        samples = timed_calls(lambda _: ray.get(ref, timeout=limits.seconds), calls, lambda _: 49)
        return CacheResult(
            samples,
            closest="ray.get() of the first call's ObjectRef, held by the caller (Ray has no "
            "memoization: calling .remote() again runs the task again)",
        )

    async def dag(self, variant: str, shape: DagShape, limits: Limits) -> DagResult:
        tag = fresh_tag("dag")
        top = shape.as_tuple()
        if variant == "ray.get":
            make: Any = lambda: [dag_top.remote(i, top, tag) for i in range(shape.tops)]  # noqa: E731
        else:
            make = lambda: dag_refs(shape, tag)  # noqa: E731
        values, seconds = self.nested(limits, "dag", make)
        assert values == shape.expected()
        return DagResult(seconds, read_executions(self.ctx.redis_url, tag))


PEER = RayPeer
