"""The distributor: hands queued work to volunteers and moves work up from busy members.

Its loop hands out work whenever it has both a volunteer and a request. Every `steal_period` it
trims each member's stack from the bottom, leaving a member as many requests as it claimed in the
last period (requests near the root of the call graph travel; those near the leaves stay local);
then, if volunteers still wait and nothing is queued, it steals from the bottom of the longest
stacks, one request per waiting volunteer, and, if even that finds nothing, volunteers at its own
parent distributor (distributors nest). Between ticks a wake-up costs one backend call.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import ClassVar

from girder.backends.base import NodeKind, StateBackend
from girder.config import Settings
from girder.scheduler.node import Node
from girder.scheduler.pools import serve_here, stop_serving_here

BLOB_GRACE = 600.0
"""Seconds a blob outlives its last put or check before a sweep may delete it (see
`StateBackend.sweep_blobs`): the time a node has to write the record that refers to a blob it
stored, or to fetch a value whose record went at once (a result that is not cached)."""

BLOB_SWEEP_PERIOD = 60.0
"""Seconds between a distributor's sweeps of the blobs that no record holds any more."""


class Distributor(Node):
    """A pool of workers (or of other distributors)."""

    kind: ClassVar[NodeKind] = NodeKind.DISTRIBUTOR

    def __init__(
        self,
        backend: StateBackend,
        settings: Settings,
        *,
        node_id: str | None = None,
        parent: str | None = None,
    ) -> None:
        super().__init__(backend, settings, node_id=node_id or settings.pool, distributor=parent)
        self.handed_to: Counter[str] = Counter()
        self.stolen_from: Counter[str] = Counter()

    def _start_loops(self) -> None:
        serve_here(self.backend, self.id)
        self._spawn(self._distribute_loop, "distribute")
        self._spawn(self._sweep_loop, "sweep")

    async def stop(self) -> None:
        if self.running:
            stop_serving_here(self.backend, self.id)
        await super().stop()

    async def _sweep_loop(self) -> None:
        """Now and then, delete the blobs that no record holds any more."""
        while True:
            await asyncio.sleep(BLOB_SWEEP_PERIOD)
            deleted = await self.backend.sweep_blobs(BLOB_GRACE)
            if deleted:
                self.log.info("swept blobs", deleted=deleted)

    async def _distribute_loop(self) -> None:
        backend = self.backend
        period = self.settings.steal_period
        clock = asyncio.get_running_loop().time
        next_tick = clock() + period
        while True:
            await self._hand_out()
            if clock() >= next_tick:
                next_tick = clock() + period
                await self._trim()
                await self._help_volunteers()
            await backend.wait_for_work(self.id, max(0.0, next_tick - clock()))

    async def _help_volunteers(self) -> None:
        """Volunteers wait and nothing is queued: steal for them, or ask the parent for work."""
        backend = self.backend
        if not await backend.volunteers(self.id) or (await backend.lengths([self.id]))[0]:
            return
        if not await self._steal_for_volunteers() and self.distributor is not None:
            await backend.volunteer(self.distributor, self.id)

    async def _hand_out(self) -> None:
        for assignment in await self.backend.hand_out(self.id, even_share=True):
            self.handed_to[assignment.volunteer] += 1
            self.stats.handed_out += 1

    async def _trim(self) -> None:
        members = await self.backend.members(self.id)
        if members:
            moved = await self.backend.trim(self.id, members)
            self.stats.stolen += moved

    async def _steal_for_volunteers(self) -> int:
        """Steal from the bottom of the longest member stacks, one request per volunteer."""
        volunteers = set(await self.backend.volunteers(self.id))
        members = [m for m in await self.backend.members(self.id) if m not in volunteers]
        if not members:
            return 0
        lengths = await self.backend.lengths(members)
        wanted = len(volunteers)
        stolen = 0
        for length, member in sorted(zip(lengths, members, strict=True), reverse=True):
            if wanted <= 0 or length == 0:
                break
            take = min(wanted, max(1, length // 2))
            moved = await self.backend.steal(self.id, member, take)
            self.stolen_from[member] += moved
            self.stats.stolen += moved
            stolen += moved
            wanted -= moved
        if stolen:
            await self._hand_out()
        return stolen
