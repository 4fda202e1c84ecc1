"""The workloads every system runs, their sizes, and the sharing DAG's shape.

Nothing here imports a peer library: every peer module, and the harness, use these definitions,
so that every system answers the same questions with the same sizes and checks the same values.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

W1 = "W1"
W2 = "W2"
W3 = "W3"
W4 = "W4"
CACHE = "cache"
DAG = "dag"
WORKLOADS: tuple[str, ...] = (W1, W2, W3, W4, CACHE, DAG)

DESCRIPTIONS: dict[str, str] = {
    W1: "one remote call, sequential calls with distinct arguments after a warm-up: p50 / p99",
    W2: "many trivial calls submitted at once: calls per second",
    W3: "nested binary tree: every node calls its two children the system's nested way: wall time",
    W4: "nested chain: chain(n) calls chain(n - 1) down to chain(0): wall time",
    CACHE: "repeat of an already computed call, sequential: p50 / p99",
    DAG: "many top-level requests over a DAG whose sub-requests overlap: wall time, executions",
}

LOWER_IS_BETTER: dict[str, bool] = {
    W1: True,
    W2: False,
    W3: True,
    W4: True,
    CACHE: True,
    DAG: True,
}
"""Direction of each workload's headline figure."""


@dataclass(frozen=True)
class DagShape:
    """The sharing DAG: `tops` top-level requests; top(i) needs `fanout` consecutive mids
    (mod `mids`), mid(j) needs `fanout` consecutive leaves (mod `leaves`): diamonds everywhere.

    Every node burns `work_ms` of CPU after its inputs are in, and counts one execution.
    """

    tops: int = 200
    mids: int = 20
    leaves: int = 10
    fanout: int = 3
    work_ms: float = 1.0

    def mids_of(self, top: int) -> list[int]:
        return [(top + k) % self.mids for k in range(self.fanout)]

    def leaves_of(self, mid: int) -> list[int]:
        return [(mid + k) % self.leaves for k in range(self.fanout)]

    @staticmethod
    def leaf_value(leaf: int) -> int:
        return leaf + 1

    def mid_value(self, mid: int) -> int:
        return mid + sum(self.leaf_value(k) for k in self.leaves_of(mid))

    def top_value(self, top: int) -> int:
        return top + sum(self.mid_value(j) for j in self.mids_of(top))

    def expected(self) -> list[int]:
        return [self.top_value(i) for i in range(self.tops)]

    @property
    def naive_executions(self) -> int:
        """Executions when every call recomputes its whole sub-DAG (no sharing at all)."""
        return self.tops * (1 + self.fanout * (1 + self.fanout))

    @property
    def distinct_nodes(self) -> int:
        """Executions when every distinct node runs exactly once."""
        mids = {j for i in range(self.tops) for j in self.mids_of(i)}
        leaves = {k for j in mids for k in self.leaves_of(j)}
        return self.tops + len(mids) + len(leaves)

    def as_tuple(self) -> tuple[int, int, int, int, float]:
        return (self.tops, self.mids, self.leaves, self.fanout, self.work_ms)

    @classmethod
    def from_tuple(cls, values: tuple[int, int, int, int, float] | list[Any]) -> DagShape:
        tops, mids, leaves, fanout, work_ms = values
        return cls(int(tops), int(mids), int(leaves), int(fanout), float(work_ms))


@dataclass(frozen=True)
class Sizes:
    """How big each workload is."""

    w1_calls: int = 1000
    w1_warmup: int = 200
    w2_calls: int = 5000
    w3_depth: int = 10
    w4_depth: int = 200
    cache_calls: int = 1000
    dag: DagShape = dataclasses.field(default_factory=DagShape)

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            w1_calls=100,
            w1_warmup=20,
            w2_calls=500,
            w3_depth=6,
            w4_depth=30,
            cache_calls=100,
            dag=DagShape(tops=40),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sizes:
        values = dict(data)
        values["dag"] = DagShape(**values["dag"])
        return cls(**values)

    def case(self, workload: str) -> str:
        """A readable name of the workload at these sizes."""
        return {
            W1: f"{self.w1_calls} sequential calls",
            W2: f"{self.w2_calls} calls at once",
            W3: f"tree({self.w3_depth}): {tree_calls(self.w3_depth)} calls",
            W4: f"chain({self.w4_depth}): {self.w4_depth + 1} calls",
            CACHE: f"{self.cache_calls} repeats of one call",
            DAG: (
                f"{self.dag.tops} top-level requests, fan-out {self.dag.fanout}, "
                f"{self.dag.work_ms:g} ms of CPU per node"
            ),
        }[workload]


def tree_calls(depth: int) -> int:
    """Calls in tree(depth): 2**(depth + 1) - 1."""
    calls: int = 2 ** (depth + 1) - 1
    return calls


def tree_value(depth: int) -> int:
    """What tree(depth, 0) returns: its number of nodes."""
    return tree_calls(depth)


def burn(ms: float) -> None:
    """Spin the CPU for `ms` milliseconds: the same work in every system."""
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        pass


# -- counting executions ------------------------------------------------------------------------

COUNTER_URL_ENV = "COMPARE_REDIS_URL"
_counter_client: Any = None


def count_execution(tag: str) -> None:
    """Count one execution of a sharing-DAG node (a Redis INCR, the same cost in every system).

    The harness's throw-away redis-server is in `COMPARE_REDIS_URL` in every process it starts.
    """
    global _counter_client
    if _counter_client is None:
        import redis  # noqa: PLC0415 - only the DAG workload needs it

        _counter_client = redis.Redis.from_url(os.environ[COUNTER_URL_ENV])
    _counter_client.incr(counter_key(tag))


def counter_key(tag: str) -> str:
    return f"compare:executions:{tag}"


def read_executions(url: str, tag: str) -> int:
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(url)
    try:
        value = client.get(counter_key(tag))
        return int(value) if value is not None else 0
    finally:
        client.close()
