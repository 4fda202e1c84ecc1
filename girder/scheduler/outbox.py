"""The outbox: completions a worker holds back to send with its next backend step.

A worker that goes on with local work right after finishing a request (the next of several quick
requests it claimed, or a parked request that the outcome made ready) sends the completion with
its next step instead of waiting a round trip for it. Nothing is held longer than `budget`
seconds: a timer sends whatever is still held (unless a sync function holds the event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from girder.backends.base import Completion
from girder.serialization import Outcome

Held = tuple[Completion, Outcome]


class Outbox:
    """Held completions, oldest first, and the timer that sends them in time."""

    __slots__ = ("_budget", "_held", "_limit", "_send_late", "_since", "_timer")

    def __init__(self, send_late: Callable[[], None], *, budget: float, limit: int) -> None:
        self._send_late = send_late
        self._budget = budget
        self._limit = limit
        self._held: list[Held] = []
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, completion: Completion, outcome: Outcome) -> None:
        if not self._held:
            self._since = time.perf_counter()
        self._held.append((completion, outcome))

    def may_hold(self) -> bool:
        """Whether the completions may wait for the next step (few enough, young enough)."""
        return len(self._held) < self._limit and time.perf_counter() - self._since < self._budget

    def hold(self) -> None:
        """Keep what was added for the next step; make sure it is sent within the budget."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._budget, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._held:
            self._send_late()

    def take(self) -> list[Held]:
        """Everything held, for sending now."""
        held, self._held = self._held, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return held

    def put_back(self, held: list[Held]) -> None:
        """Completions whose sending failed: first in line for the next step."""
        if held:
            self._held[:0] = held
            self._since = time.perf_counter()

    def keys(self) -> list[str]:
        """The keys whose completions are held."""
        return [completion.key for completion, _ in self._held]

    def __bool__(self) -> bool:
        return bool(self._held)
