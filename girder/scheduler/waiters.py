"""A node's local waiting: which keys it waits for, and who inside the node wants each one.

One `Batch` is one `call_reentrant` (or one client submission): a single future that completes
when every key of the batch has an outcome. A stream's batch also has a `Feed`: the answers of
its one key in order, partial ones as they are published, then the final one. Outcomes arrive
either from this node's own completions or from its inbox of notifications. The node also keeps
how it submitted each key, so that it can submit again if the backend loses its state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from girder.backends.base import NewRequest
from girder.functions import GridFunction, Request
from girder.serialization import Blob, Outcome, RequestPayload


class Feed:
    """The answers of one streamed key, in order, for one reader.

    An answer is pushed once: one whose count (`Outcome.answer`) is not above the last one's
    is dropped (a repeat, or the final outcome that repeats the last partial one); an answer
    that arrives after the final one too. The end is `None` when the final outcome brought
    nothing new."""

    __slots__ = ("_answers", "_loop", "_waiter", "ended", "last", "on_ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._answers: deque[Outcome | None] = deque()
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self.on_ready: Callable[[], None] | None = None
        """Called synchronously when an answer arrives for a parked reader (a worker reserves
        a baton for it)."""
        self.last = 0
        self.ended = False

    def push(self, outcome: Outcome) -> None:
        if self.ended:
            return
        fresh = outcome.error is not None or not outcome.answer or outcome.answer > self.last
        if outcome.final:
            self.ended = True
            self._answers.append(outcome if fresh else None)
        elif fresh:
            self.last = outcome.answer
            self._answers.append(outcome)
        else:
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if self.on_ready is not None:
                self.on_ready()
            waiter.set_result(None)

    def ready(self) -> bool:
        return bool(self._answers)

    async def wait(self) -> None:
        """Wait until an answer is ready (`ready()` is then True)."""
        if not self._answers:
            self._waiter = self._loop.create_future()
            await self._waiter

    def take(self) -> Outcome | None:
        """The next answer; `None` at the end (when the final outcome brought nothing new)."""
        return self._answers.popleft()


class Batch:
    """Outcomes of several keys, in order, and one future that completes when all are in."""

    __slots__ = ("feed", "future", "on_outcome", "on_ready", "outcomes", "ready", "remaining")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.outcomes: list[Outcome | None] = [None] * size
        self.remaining = size
        self.future: asyncio.Future[None] = loop.create_future()
        self.on_ready: Callable[[], None] | None = None
        """Called synchronously when the last outcome arrives (a worker reserves a baton)."""
        self.ready = False
        self.feed: Feed | None = None
        """A stream's answers (its batch has one key)."""
        self.on_outcome: Callable[[], None] | None = None
        """Called when each slot gets its outcome (a progress bar advances)."""
        if size == 0:
            self.future.set_result(None)

    def set(self, index: int, outcome: Outcome) -> None:
        if self.feed is not None:
            self.feed.push(outcome)
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.remaining -= 1
            if self.on_outcome is not None:
                self.on_outcome()
            if self.remaining == 0 and not self.future.done():
                self.ready = True
                if self.on_ready is not None:
                    self.on_ready()
                self.future.set_result(None)

    def results(self) -> list[Outcome]:
        return [o for o in self.outcomes if o is not None]


@dataclass(slots=True)
class Submission:
    """How a key was submitted (to submit it again) and the batch slots that wait for it."""

    request: NewRequest
    into: str
    on_top: bool
    waiter_key: str | None
    job: str | None
    """The job it is a root of (a top-level submission), else None."""
    source: Request
    """The request itself (for its readable form, when something must be said about it)."""
    slots: list[tuple[Batch, int]] = field(default_factory=list)
    local: tuple[RequestPayload, GridFunction[..., Any]] | None = None
    """The payload and function themselves, when every argument is an immutable scalar: a
    worker of this node that claims the key may use them instead of decoding the bytes."""
    blobs: tuple[Blob, ...] = ()
    """The blobs of its large arguments (stored again when it is submitted again)."""
    next_check: float = 0.0
    """When to submit it again if it is still awaited then (0: not scheduled yet)."""
    checks: int = 0


class Waiters:
    """The keys a node waits for."""

    __slots__ = ("_watching",)

    def __init__(self) -> None:
        self._watching: dict[str, Submission] = {}

    def watch(self, submission: Submission, batch: Batch, index: int) -> None:
        """Route the outcome of `submission`'s key to `batch[index]`."""
        known = self._watching.get(submission.request.key)
        if known is None:
            self._watching[submission.request.key] = submission
            known = submission
        known.slots.append((batch, index))

    def resolve(self, key: str, outcome: Outcome) -> bool:
        """Deliver an outcome to everyone here who waits for `key`. False if nobody did."""
        submission = self._watching.pop(key, None)
        if submission is None:
            return False
        for batch, index in submission.slots:
            batch.set(index, outcome)
        return True

    def partial(self, key: str, outcome: Outcome) -> None:
        """Deliver a partial answer of `key` to the streams here that read it (nothing else
        waits for it: the key is not resolved)."""
        submission = self._watching.get(key)
        if submission is None:
            return
        for batch, _ in submission.slots:
            if batch.feed is not None:
                batch.feed.push(outcome)

    def local(self, key: str) -> tuple[RequestPayload, GridFunction[..., Any]] | None:
        """(payload, function) of a key this node submitted with immutable arguments."""
        submission = self._watching.get(key)
        return None if submission is None else submission.local

    def source(self, key: str) -> Request | None:
        """The request of an awaited key."""
        submission = self._watching.get(key)
        return None if submission is None else submission.source

    def is_waiting(self, key: str) -> bool:
        return key in self._watching

    def due(self, now: float, first: float, longest: float) -> list[Submission]:
        """What has been awaited long enough to be submitted again: a submission is due
        `first` seconds after it is first seen here, then after twice as long each time, at
        most `longest` seconds apart."""
        found = []
        for submission in self._watching.values():
            if submission.next_check == 0.0:
                submission.next_check = now + first
            elif submission.next_check <= now:
                submission.checks += 1
                submission.next_check = now + min(longest, first * 2**submission.checks)
                found.append(submission)
        return found

    def check_all_by(self, when: float) -> None:
        """Have every awaited key submitted again by `when`, backing off anew from there."""
        for submission in self._watching.values():
            submission.checks = 0
            if submission.next_check:
                submission.next_check = min(submission.next_check, when)

    def fail_all(self, outcome: Outcome) -> int:
        """Give every awaited key `outcome` (the backend cannot be used). Returns how many."""
        keys = list(self._watching)
        for key in keys:
            self.resolve(key, outcome)
        return len(keys)

    def fail_into(self, into: str, outcome: Callable[[str], Outcome]) -> int:
        """Give every key submitted into the work list `into` (a pool nobody serves) the
        outcome `outcome(readable form of its request)`. Returns how many keys."""
        keys = [key for key, s in self._watching.items() if s.into == into]
        for key in keys:
            self.resolve(key, outcome(self._watching[key].source.readable()))
        return len(keys)

    def submissions(self) -> list[Submission]:
        """Everything still awaited (for resubmission after the backend lost its state)."""
        return list(self._watching.values())

    def __len__(self) -> int:
        return len(self._watching)
