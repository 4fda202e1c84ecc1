"""Pools a node sends work to, and whether a distributor serves them.

A request sent to a pool that no distributor serves (a typo in a pool name) would wait forever.
So a node remembers when it last saw a live distributor of each pool it sends work to; when it
sends work to a pool it has not seen served within the last `pool_wait` seconds, it watches the
grid's membership (a few times a second, and only then: the hot path costs a dictionary look-up)
until a distributor of that name is alive, or `pool_wait` seconds pass. Then it fails what it
waits for in that pool. A distributor that restarts within `pool_wait` fails nothing, and a pool
that a distributor in this very process serves (`Grid.local`) is served, whatever the backend's
membership says for the moment (under an evicting `maxmemory-policy` its records may go).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from girder.backends.base import NodeKind, StateBackend

_POLL = 0.25
"""The longest time between two looks at the membership while a pool seems unserved."""


_served_here: Counter[tuple[int, str]] = Counter()
"""The distributors that run in this process, by their backend (its id) and pool."""


def serve_here(backend: StateBackend, pool: str) -> None:
    """A distributor of `pool` on `backend` runs in this process from now on."""
    _served_here[id(backend), pool] += 1


def stop_serving_here(backend: StateBackend, pool: str) -> None:
    """A distributor of `pool` on `backend` in this process stopped."""
    _served_here[id(backend), pool] -= 1
    if _served_here[id(backend), pool] <= 0:
        del _served_here[id(backend), pool]


async def served_pools(backend: StateBackend) -> set[str]:
    """The names of the live distributors: the pools that are served now."""
    return {n.node for n in await backend.nodes() if n.kind is NodeKind.DISTRIBUTOR and n.alive}


class PoolWatch:
    """When each pool was last seen served, and one watch per pool that was not lately."""

    __slots__ = ("_backend", "_on_unserved", "_seen", "_wait", "_watches")

    def __init__(
        self,
        backend: StateBackend,
        wait: float,
        on_unserved: Callable[[str, list[str]], None],
    ) -> None:
        self._backend = backend
        self._wait = wait
        self._on_unserved = on_unserved
        """Called with a pool and the pools that exist when the pool stayed unserved."""
        self._seen: dict[str, float] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}

    def check(self, pool: str, loop: asyncio.AbstractEventLoop) -> None:
        """Work goes to `pool` now: watch it unless it was seen served lately."""
        seen = self._seen.get(pool)
        if seen is not None and loop.time() - seen < self._wait:
            return
        if pool not in self._watches:
            task = loop.create_task(self._watch(pool, loop), name=f"pool watch {pool}")
            self._watches[pool] = task
            task.add_done_callback(lambda _: self._watches.pop(pool, None))

    async def _watch(self, pool: str, loop: asyncio.AbstractEventLoop) -> None:
        deadline = loop.time() + self._wait
        while True:
            if _served_here[id(self._backend), pool]:
                self._seen[pool] = loop.time()
                return
            try:
                pools = await served_pools(self._backend)
            except Exception:  # the backend is away: that is no reason to fail the requests
                pools = None
            now = loop.time()
            if pools is not None:
                for name in pools:
                    self._seen[name] = now
                if pool in pools:
                    return
                if now >= deadline:
                    self._on_unserved(pool, sorted(pools))
                    return
            await asyncio.sleep(min(_POLL, max(0.0, deadline - now)) or _POLL)

    async def stop(self) -> None:
        """Stop the watches under way."""
        watches = list(self._watches.values())
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
