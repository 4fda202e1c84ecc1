"""girder, embedded: `Grid.local(workers=N)` with the in-memory backend, in this one process.

No server and no worker processes: the distributor and the N workers are coroutines on this
process's event loop, so N > 1 buys no parallelism (one CPU), only the scheduling. It is the
reference point for the per-call overhead without any network hop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from typing import Any

import girder
from benchmarks.compare import girder_tasks as tasks
from benchmarks.compare.common import CacheResult, Context, DagResult, Limits, Peer
from benchmarks.compare.workloads import DagShape, read_executions, tree_value
from benchmarks.harness import fresh_tag


def clock_us() -> float:
    return time.perf_counter_ns() / 1000.0


class GirderPeer(Peer):
    """The workloads through the girder client API; subclasses say where the grid runs."""

    system = "girder-embedded"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.grid: girder.Grid | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "grid": f"Grid.local(workers={self.ctx.workers}), memory:// backend, one process",
            "nested": "girder.call_reentrant",
        }

    def versions(self) -> dict[str, str]:
        return {"girder": girder.__version__, "redis-py": importlib.metadata.version("redis")}

    async def start(self) -> None:
        self.grid = girder.Grid.local(workers=self.ctx.workers)
        await self.grid.start()

    async def stop(self) -> None:
        if self.grid is not None:
            grid, self.grid = self.grid, None
            await asyncio.wait_for(grid.stop(), 30)

    @property
    def g(self) -> girder.Grid:
        assert self.grid is not None, "the grid is not started"
        return self.grid

    async def warm_up(self) -> None:
        tag = fresh_tag("warm")
        await self.g.call_all([(tasks.echo, tag, i) for i in range(200)])
        await self.g.call(tasks.tree, 4, 0, tag)
        await self.g.call(tasks.chain, 20, tag)
        await self.g.call(tasks.square, tag, 3)

    async def w1(self, calls: int, warmup: int, limits: Limits) -> list[float]:
        async def body() -> list[float]:
            tag = fresh_tag("w1")
            for i in range(warmup):
                await self.g.call(tasks.echo, tag, -1 - i)
            samples = []
            for i in range(calls):
                start = clock_us()
                value = await self.g.call(tasks.echo, tag, i)
                samples.append(clock_us() - start)
                assert value == i
            return samples

        return await asyncio.wait_for(body(), limits.seconds)

    async def w2(self, calls: int, limits: Limits) -> float:
        tag = fresh_tag("w2")
        requests = [(tasks.echo, tag, i) for i in range(calls)]
        start = time.perf_counter()
        values = await asyncio.wait_for(self.g.call_all(requests), limits.seconds)
        seconds = time.perf_counter() - start
        assert values == list(range(calls))
        return seconds

    async def w3(self, variant: str, depth: int, limits: Limits) -> float:
        start = time.perf_counter()
        value = await asyncio.wait_for(
            self.g.call(tasks.tree, depth, 0, fresh_tag("w3")), limits.seconds
        )
        seconds = time.perf_counter() - start
        assert value == tree_value(depth), value
        return seconds

    async def w4(self, variant: str, depth: int, limits: Limits) -> float:
        start = time.perf_counter()
        value = await asyncio.wait_for(
            self.g.call(tasks.chain, depth, fresh_tag("w4")), limits.seconds
        )
        seconds = time.perf_counter() - start
        assert value == depth, value
        return seconds

    async def cache(self, calls: int, limits: Limits) -> CacheResult:
        async def body() -> list[float]:
            tag = fresh_tag("cache")
            await self.g.call(tasks.square, tag, 7)  # computed once
            samples = []
            for _ in range(calls):
                start = clock_us()
                value = await self.g.call(tasks.square, tag, 7)
                samples.append(clock_us() - start)
                assert value == 49
            return samples

        return CacheResult(await asyncio.wait_for(body(), limits.seconds))

    async def dag(self, variant: str, shape: DagShape, limits: Limits) -> DagResult:
        tag = fresh_tag("dag")
        top = shape.as_tuple()
        requests = [(tasks.dag_top, i, top, tag) for i in range(shape.tops)]
        start = time.perf_counter()
        values = await asyncio.wait_for(self.g.call_all(requests), limits.seconds)
        seconds = time.perf_counter() - start
        assert values == shape.expected()
        return DagResult(seconds, read_executions(self.ctx.redis_url, tag))


PEER = GirderPeer
