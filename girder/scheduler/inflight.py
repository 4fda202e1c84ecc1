"""`CallsInFlight`: the backend calls that complete or claim requests, held back while a node
reconciles.

A node that learns the backend lost writes reconciles: it names the keys it runs, holds claims
for or has completions of, and the backend gives back the others in its running set. A call
under way then (sent again to a new server after a failover, or a blocking wait-and-claim) may
have been made by the server already while its reply has not arrived, and a call started while
the reconcile is on its way may be made before it: either way its keys are in the running set
but not named, and would be given back to others while this node runs them too. So each such
call counts itself (`async with calls:`), and the reconcile runs `held_back()`: no call starts
until it ends, and every call under way has ended (its claims taken in) when it begins.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CallsInFlight:
    """An async context manager around each call; `held_back()` around a reconcile."""

    def __init__(self) -> None:
        self._under_way = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> None:
        if not self._open.is_set():
            await self._open.wait()
        self._under_way += 1
        self._idle.clear()

    async def __aexit__(self, *exc_info: object) -> None:
        self._under_way -= 1
        if not self._under_way:
            self._idle.set()

    @property
    def holding_back(self) -> bool:
        """Whether calls are held back now (a reconcile is on its way or waits for calls)."""
        return not self._open.is_set()

    @asynccontextmanager
    async def held_back(self) -> AsyncIterator[None]:
        """Inside, no call starts, and every call under way when it was entered has ended."""
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()
