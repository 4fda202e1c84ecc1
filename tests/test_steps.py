"""A worker's steps: completions sent together, quick sync requests claimed several at a time,
and the outbox that holds a completion back for at most its budget."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gridfns import add, slow_sync, then_nap
from processes import wait_until

import girder
from girder.backends.base import Claimed, Completion, RequestState
from girder.backends.memory import MemoryBackend
from girder.config import load_settings
from girder.functions import Request
from girder.scheduler.outbox import Outbox
from girder.serialization import Outcome


class RecordingBackend(MemoryBackend):
    """Remembers, per worker step, how many completions it sent and requests it claimed; the
    workers treat it as a backend whose every operation is a round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.round_trips = True
        self.steps: list[tuple[str, int, int]] = []

    async def complete_and_claim(
        self,
        node: str,
        completions: Sequence[Completion],
        *,
        claim: int,
        volunteer_at: str | None = None,
    ) -> list[Claimed]:
        claimed = await super().complete_and_claim(
            node, completions, claim=claim, volunteer_at=volunteer_at
        )
        self.steps.append((node, len(completions), len(claimed)))
        return claimed


def recording_grid(workers: int) -> tuple[girder.Grid, RecordingBackend]:
    backend = RecordingBackend()
    settings = load_settings(workers=workers)
    return girder.Grid(settings, local_workers=workers, backend=backend), backend


async def test_quick_sync_requests_go_several_per_step() -> None:
    grid, backend = recording_grid(workers=1)
    async with grid:
        values = await asyncio.wait_for(grid.call_all([(add, i, 1) for i in range(300)]), 10)
    assert values == [i + 1 for i in range(300)]
    completed = sum(sent for _, sent, _ in backend.steps)
    assert completed == 300
    assert len(backend.steps) < 300 / 4  # one step per request would be 300
    assert max(claimed for _, _, claimed in backend.steps) > 1
    assert max(sent for _, sent, _ in backend.steps) > 1


async def test_slow_sync_requests_are_claimed_one_at_a_time() -> None:
    """A worker never sits on claimed work that another worker could run."""
    grid, backend = recording_grid(workers=2)
    async with grid:
        values = await asyncio.wait_for(grid.call_all([(slow_sync, 20, i) for i in range(8)]), 10)
        ran = [worker.stats.ran for worker in grid.workers]
    assert values == list(range(8))
    assert max(claimed for _, _, claimed in backend.steps) == 1
    assert min(ran) >= 2, ran


async def test_a_held_back_completion_is_sent_while_its_parent_still_runs() -> None:
    """add(1, 2) finishes and its parent resumes on the same worker at once; the completion
    waits in the outbox for the parent's step, but no longer than the budget."""
    grid, backend = recording_grid(workers=1)
    async with grid:
        parent = grid.submit(then_nap, 1, 2, 2000)
        child_key = Request(add, 1, 2).key

        async def sent() -> bool:
            return await grid.backend.state(child_key) == RequestState.DONE

        await wait_until(sent, 1.0, "the held-back completion")
        assert not parent.done()
        # Sent alone, by the outbox's timer, not with a step of the parent.
        assert ("pool-w1", 1, 0) in backend.steps  # the grid stops it on the way out


async def test_the_outbox_sends_late_by_its_budget_and_not_after_a_take() -> None:
    sent = asyncio.Event()
    outbox = Outbox(sent.set, budget=0.01, limit=4)
    completion = Completion("k", b"outcome", True)
    outbox.add(completion, Outcome(value=1))
    outbox.hold()
    await asyncio.wait_for(sent.wait(), 1)
    assert [held for held, _ in outbox.take()] == [completion]

    sent.clear()
    outbox.add(completion, Outcome(value=1))
    outbox.hold()
    assert len(outbox.take()) == 1
    assert not outbox
    await asyncio.sleep(0.05)  # past the budget: the cancelled timer must not fire
    assert not sent.is_set()


def test_the_outbox_holds_no_more_than_its_limit() -> None:
    outbox = Outbox(lambda: None, budget=60, limit=2)
    outbox.add(Completion("a", b"", True), Outcome(value=1))
    assert outbox.may_hold()
    outbox.add(Completion("b", b"", True), Outcome(value=2))
    assert not outbox.may_hold()


_held_runs: list[str] = []
_release_held = asyncio.Event()


@girder.function(cache=False)
async def held(tag: str) -> str:
    """Runs until `_release_held` is set; each start is counted."""
    _held_runs.append(tag)
    await _release_held.wait()
    return tag


async def test_a_key_claimed_again_while_it_runs_here_is_not_run_twice() -> None:
    """The backend gives back a key this worker still runs (as after a stall past its lease or
    a reconcile) and the worker claims it again: the run under way completes it, no second
    run starts beside it in the same process."""
    _held_runs.clear()
    _release_held.clear()
    async with girder.Grid.local(workers=1, concurrency=2) as grid:
        worker = grid.workers[0]
        handle = grid.submit(held, "x")

        async def started() -> bool:
            return _held_runs == ["x"]

        await wait_until(started, timeout=10, what="the first run")
        assert await grid.backend.reconcile(worker.id, []) == 1

        async def claimed_again() -> bool:
            return await grid.backend.state(handle.key) == RequestState.RUNNING

        await wait_until(claimed_again, timeout=10, what="the key claimed again")
        _release_held.set()
        assert await asyncio.wait_for(handle, 10) == "x"
        assert _held_runs == ["x"]
