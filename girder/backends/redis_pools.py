"""`PoolSteps`: the pools' steps of the sharded layout, on lists whose keys they are given.

With the records in their keys' own slots (`redis_records`), what is left of a submission, a
claim or a completion in a pool is list work: push keys onto a work list, pop them into a
running set, drop them from it. These steps do that and read no record. They get every key
they touch (`PoolKeys`), so the same scripts serve a pool whose lists are in the grid's slot
and, later, lists in each node's own slot (docs/scaling.md, "The pools' step: by node").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from girder.backends.redis_access import RedisAccess
from girder.backends.redis_keys import RedisKeys

CRASHED_MARK = "!"
"""Before a key on a work list: the key killed a worker before, and is claimed alone (request
keys never start with it)."""


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The keys of one node's lists, all in one slot."""

    work: str
    wake: str
    running: str
    journal: str
    counts: str
    """A hash: node -> keys it claimed since its last trim."""
    migrating: str
    """The slot's migration probe (never exists)."""

    @classmethod
    def in_grid(cls, keys: RedisKeys, node: str) -> PoolKeys:
        """Node's lists in the grid's slot, where the one-slot layout keeps them."""
        return cls(
            keys.work(node),
            keys.wake(node),
            keys.running(node),
            keys.journal(node),
            keys.pops,
            keys.migrating,
        )


class PoolSteps:
    """The pools' steps of a grid."""

    def __init__(self, access: RedisAccess) -> None:
        self._access = access

    async def push(
        self, pool: PoolKeys, keys: Sequence[str], *, on_top: bool, crashed: Sequence[str] = ()
    ) -> int:
        """Push `keys` onto pool's work list (on its top, the last ending on top, or on its
        bottom, the first coming up first) and ring its wake list; those also in `crashed` go
        marked, to be claimed alone. The list's length."""
        marked = set(crashed)
        entries = [CRASHED_MARK + key if key in marked else key for key in keys]
        where = [pool.work, pool.wake, pool.migrating]
        length = await self._access.slot_script(
            "pool_push", where, "1" if on_top else "0", *entries
        )
        return int(length)

    async def claim(
        self, node: str, pool: PoolKeys, count: int, *, done: Sequence[str] = ()
    ) -> list[str]:
        """Drop `done` from node's running set, then pop up to `count` keys from the top of
        its work list into it (a marked key only first, and alone): the keys for the records'
        steps to claim. Sent once even if its reply was lost."""
        where = [pool.work, pool.running, pool.journal, pool.counts, pool.migrating]
        popped = await self._access.journaled_slot("pool_claim", node, where, node, count, *done)
        return [key.decode() if isinstance(key, bytes) else str(key) for key in popped]
