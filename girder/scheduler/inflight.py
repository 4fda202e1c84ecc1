"""`CallsInFlight`: backend calls under way, for whoever must wait for those running now.

A node that learns the backend lost writes reconciles: it tells the backend which keys it runs
or holds claims for, and the backend gives back the others. A claim whose call is still under
way then (sent again to the new server after a failover, or a blocking wait-and-claim) may
have been made by the server already, but its reply has not arrived: the keys would not be
named, would be given back to others, and then run here too. So the reconcile first waits for
the claiming calls under way when it starts (not for those started since: it must not wait
forever on a busy worker), and their claims count as held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class CallsInFlight:
    """The calls under way, each a future that is done when its call has ended."""

    def __init__(self) -> None:
        self._calls: set[asyncio.Future[None]] = set()

    @contextmanager
    def call(self) -> Iterator[None]:
        """Count the body (the call and taking in its reply) as a call under way."""
        ended = asyncio.get_running_loop().create_future()
        self._calls.add(ended)
        try:
            yield
        finally:
            self._calls.discard(ended)
            ended.set_result(None)

    async def settled(self) -> None:
        """Wait until every call under way now has ended, however it ended."""
        if self._calls:
            await asyncio.wait(list(self._calls))
