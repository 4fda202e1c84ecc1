"""The baton: how many user functions a worker runs at a time (one, unless `concurrency=K`).

Evaluating a request holds a baton; a request that parks in `call_reentrant` passes it on and
takes one back when its sub-requests are done. Parked requests that are ready again get a free
baton before the worker loop does, so work in progress finishes before new work starts.

An async request that waits on something else than the grid (I/O, a sleep) computes nothing
meanwhile: its baton is *lent* to the worker loop, up to `loans` requests at a time, so that
I/O-bound functions wait together while CPU-bound ones still run one per baton.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Baton:
    """A counting baton with priority for resuming requests over the worker loop."""

    __slots__ = ("_free", "_loans_left", "_loop", "_reserved", "_resumers", "_worker_waiter")

    def __init__(self, permits: int = 1, *, loans: int = 0) -> None:
        self._free = permits
        self._loans_left = loans
        self._reserved = 0
        self._resumers: deque[asyncio.Future[None]] = deque()
        self._worker_waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def reserve(self) -> None:
        """A parked request became ready: keep a baton for it from now on.

        Called synchronously when its sub-requests are done, before its task gets to run, so
        the worker loop cannot take the baton for new work in between (which would turn the
        depth-first relay breadth-first).
        """
        self._reserved += 1

    def cancel_reservation(self) -> None:
        """The ready request was cancelled before it took its baton."""
        self._reserved -= 1
        if self._free > self._reserved:
            self._wake_worker()

    def _wake_worker(self) -> None:
        waiter = self._worker_waiter
        if waiter is not None and not waiter.done():
            self._worker_waiter = None
            self._free -= 1
            waiter.set_result(None)

    def _future(self) -> asyncio.Future[None]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.create_future()

    async def acquire_for_resume(self, *, reserved: bool = False) -> None:
        """Take a baton for a request that was parked (turning its reservation, if any, into
        the baton itself or a place in the queue of resuming requests)."""
        if reserved:
            self._reserved -= 1
        if self._free > 0 and not self._resumers:
            self._free -= 1
            return
        future = self._future()
        self._resumers.append(future)
        await self._wait(future)

    def try_acquire_for_work(self) -> bool:
        """Take a baton for the worker loop at once if one is free (and not reserved)."""
        if self._free > self._reserved and not self._resumers:
            self._free -= 1
            return True
        return False

    async def acquire_for_work(self) -> None:
        """Take a baton for the worker loop (only one loop waits at a time)."""
        if self._free > self._reserved and not self._resumers:
            self._free -= 1
            return
        future = self._worker_waiter = self._future()
        await self._wait(future)

    async def _wait(self, future: asyncio.Future[None]) -> None:
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # it was handed to us just as we were cancelled
            raise

    def idle_after_release(self) -> bool:
        """Whether a release now would leave the baton to the worker loop (nobody resuming)."""
        return not self._resumers and self._reserved == 0

    def worker_waiting(self) -> bool:
        """Whether the worker loop waits for a baton."""
        return self._worker_waiter is not None

    def lend(self) -> bool:
        """Pass on the baton of a request that waits on I/O, if fewer than `loans` do already.

        The request keeps a loan until it ends (`end_loan`) or takes a baton back after parking.
        """
        if self._loans_left <= 0:
            return False
        self._loans_left -= 1
        self.release()
        return True

    def end_loan(self) -> None:
        """A request that had lent its baton finished or took a baton back."""
        self._loans_left += 1

    def release(self) -> None:
        """Pass the baton on: to a resuming request first, then to the worker loop."""
        while self._resumers:
            future = self._resumers.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
        if self._free > self._reserved:
            self._wake_worker()
