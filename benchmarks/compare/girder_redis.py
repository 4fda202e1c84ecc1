"""girder on Redis: one `girder distributor` and N `girder worker` processes (started through
the `girder` command, as a user would), and a `Grid.connect` client in this process.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import girder
from benchmarks.compare.common import Context, child_env
from benchmarks.compare.girder_embedded import GirderPeer
from benchmarks.harness import Children
from girder.backends import open_backend
from girder.backends.base import NodeKind

POOL = "compare"
TASKS = "benchmarks.compare.girder_tasks"


class GirderRedisPeer(GirderPeer):
    system = "girder-redis"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.children: Children | None = None
        self.names = [f"{POOL}-w{i + 1}" for i in range(ctx.workers)]

    def settings(self) -> dict[str, Any]:
        return {
            "grid": (
                f"girder distributor + {self.ctx.workers} x girder worker processes "
                f"(--concurrency 1), Redis on loopback TCP; client Grid.connect"
            ),
            "nested": "girder.call_reentrant",
            "defaults": "steal_period 0.1 s, GIRDER_LOG_LEVEL=WARNING",
        }

    async def start(self) -> None:
        env = child_env(self.ctx.redis_url) | {"GIRDER_LOG_LEVEL": "WARNING"}
        children = Children(env, self.ctx.logs)
        self.children = children
        url = self.ctx.redis_url
        python = [sys.executable, "-m", "girder"]
        children.start(f"{POOL}-distributor", [*python, "distributor", "--backend", url,
                                               "--name", POOL])  # fmt: skip
        for name in self.names:
            children.start(name, [*python, "worker", "--backend", url, "--pool", POOL,
                                  "--name", name, "--import", TASKS])  # fmt: skip
        await self._wait_ready(30)
        self.grid = girder.Grid.connect(url, pool=POOL)
        await self.grid.start()

    async def _wait_ready(self, timeout: float) -> None:
        """Until the distributor and every worker are alive and have volunteered."""
        assert self.children is not None
        backend = open_backend(self.ctx.redis_url)
        await backend.connect()
        try:
            deadline = time.monotonic() + timeout
            while True:
                if dead := self.children.dead():
                    raise RuntimeError(f"{dead} exited at start-up\n{self.children.tail(dead)}")
                alive = {n.node: n.kind for n in await backend.nodes() if n.alive}
                volunteers = set(await backend.volunteers(POOL))
                if (
                    alive.get(POOL) == NodeKind.DISTRIBUTOR
                    and all(alive.get(w) == NodeKind.WORKER for w in self.names)
                    and set(self.names) <= volunteers
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"grid not ready after {timeout} s\n{self.children.tail()}")
                await asyncio.sleep(0.05)
        finally:
            await backend.close()

    async def stop(self) -> None:
        await super().stop()
        if self.children is not None:
            children, self.children = self.children, None
            await asyncio.to_thread(children.close)


PEER = GirderRedisPeer
