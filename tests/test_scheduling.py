"""The relay and distribution: the seeds' sharing scenario, the baton, nested distributors."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence

import pytest
from gridfns import add, calls, share_a, share_z, slow_square, tree

import girder
from girder.backends.base import Beat, Claimed, Completion, NewRequest, NodeKind, RequestState
from girder.backends.memory import MemoryBackend
from girder.config import Settings
from girder.scheduler import Distributor, Worker
from girder.scheduler.baton import Baton
from girder.serialization import Outcome


async def test_sharing_scenario_of_the_seeds_finishes() -> None:
    """A needs B and C, B and C need D, D needs E, Z needs E (running elsewhere)."""
    calls.clear()
    async with girder.Grid.local(workers=2) as grid:
        a, z = await asyncio.wait_for(grid.call_all([(share_a, "t1"), (share_z, "t1")]), timeout=10)
    assert a == "A(BDE,CDE)"
    assert z == "ZE"
    assert calls["E", "t1"] == 1
    assert calls["D", "t1"] == 1


async def test_baton_prefers_resuming_requests() -> None:
    baton = Baton(1)
    await baton.acquire_for_work()
    order: list[str] = []

    async def take(kind: str) -> None:
        if kind == "work":
            await baton.acquire_for_work()
        else:
            await baton.acquire_for_resume()
        order.append(kind)
        baton.release()

    work = asyncio.create_task(take("work"))
    await asyncio.sleep(0)
    resume = asyncio.create_task(take("resume"))
    await asyncio.sleep(0)
    baton.release()
    await asyncio.gather(work, resume)
    assert order == ["resume", "work"]


async def test_concurrency_gives_several_batons() -> None:
    """With concurrency=3 three sleeping functions overlap on one worker."""
    async with girder.Grid.local(workers=1, concurrency=3) as grid:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await grid.call_all([(slow_square, 100 + i) for i in range(3)])
        assert loop.time() - start < 0.14  # three 50 ms sleeps at once, not 150 ms


async def test_nested_distributors_share_work() -> None:
    """A root pool with a child pool; the child's workers get work submitted at the root."""
    backend = MemoryBackend()
    settings = Settings(pool="root", steal_period=0.01, heartbeat_interval=0.05)
    root = Distributor(backend, settings, node_id="root")
    child = Distributor(backend, settings, node_id="child", parent="root")
    workers = [Worker(backend, settings, node_id=f"w{i}", distributor="child") for i in range(2)]
    client_grid = girder.Grid(settings, backend=backend)
    for node in (root, child, *workers):
        await node.start()
    await client_grid.client.start()
    try:
        assert await asyncio.wait_for(client_grid.call(tree, 8, 0), 10) == 511
        assert await client_grid.call(add, 2, 3) == 5
        assert sum(w.stats.ran for w in workers) == 512
        assert root.handed_to["child"] >= 1
    finally:
        await client_grid.client.stop()
        for node in (*workers, child, root):
            await node.stop()


@pytest.mark.parametrize("depth", [1, 6])
async def test_tree_values(depth: int) -> None:
    async with girder.Grid.local(workers=3) as grid:
        assert await grid.call(tree, depth, 0) == 2 ** (depth + 1) - 1


async def test_relay_stays_depth_first() -> None:
    """A parked request whose sub-requests are done resumes before the worker takes new work,
    so a tree on one worker never has more than about its depth of requests parked."""
    parked_peak = 0

    async def watch(grid: girder.Grid) -> None:
        nonlocal parked_peak
        while True:
            parked_peak = max(parked_peak, len(grid.workers[0]._evaluations))
            await asyncio.sleep(0)

    async with girder.Grid.local(workers=1) as grid:
        watcher = asyncio.create_task(watch(grid))
        assert await grid.call(tree, 12, 0) == 8191
        watcher.cancel()
    assert 0 < parked_peak <= 2 * 12


async def test_baton_reservation_keeps_the_loop_waiting() -> None:
    baton = Baton(1)
    await baton.acquire_for_resume()  # a request runs
    baton.reserve()  # a parked one became ready
    baton.release()  # the running one finishes
    loop_task = asyncio.create_task(baton.acquire_for_work())
    await asyncio.sleep(0)
    assert not loop_task.done()  # the baton is kept for the ready request
    await baton.acquire_for_resume(reserved=True)
    baton.release()
    await asyncio.wait_for(loop_task, 1)


class _LosingWrites(MemoryBackend):
    """Reports lost writes (as a failover would) at the heartbeat after `lose` is set."""

    lose = False

    async def heartbeat(
        self, node: str, ttl: float, counters: Mapping[str, int] | None = None
    ) -> Beat:
        beat = await super().heartbeat(node, ttl, counters)
        lost, self.lose = self.lose, False
        return dataclasses.replace(beat, lost_writes=lost)


async def test_a_worker_gives_back_the_claims_it_has_not_started_when_writes_were_lost() -> None:
    """A claim may be among the lost writes, its key pending on a work list again: a worker
    that kept it would run the key twice once it is claimed again (found by the cluster chaos,
    seed 2). So it drops every claim not started, and the reconcile gives back the ones that
    were kept."""
    backend = _LosingWrites()
    worker = Worker(backend, Settings(), node_id="w", distributor="d")
    worker._loop = asyncio.get_running_loop()  # not started: the test drives its heartbeats
    await backend.join("w", NodeKind.WORKER, "d", 60)
    await backend.submit("c", [NewRequest("k", b"payload")], into="w", on_top=True)
    claimed = await backend.claim("w")
    assert claimed is not None
    worker.adopt([claimed])
    await worker._beat()
    assert worker.running_keys() == ["k"]
    assert await backend.state("k") == RequestState.RUNNING
    backend.lose = True
    await worker._beat()
    assert worker.running_keys() == []
    assert await backend.state("k") == RequestState.PENDING


class _RepliesLate(_LosingWrites):
    """Makes a `complete_and_claim` at once, but holds its reply until `reply` is set (a call
    sent again to a new server after a failover, whose reply comes after the heartbeat)."""

    def __init__(self) -> None:
        super().__init__()
        self.made = asyncio.Event()
        self.reply = asyncio.Event()

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
        self.made.set()
        await self.reply.wait()
        return claimed


async def test_a_reconcile_keeps_what_a_call_under_way_claimed() -> None:
    """The server made a claim whose reply has not come when a heartbeat finds lost writes: a
    reconcile that named only the claims already known gave the key back to others while this
    worker ran it too (the chaos run, seed 31, once a heartbeat on a restarted server counted
    as lost writes). The reconcile waits for the calls under way, and keeps their claims."""
    backend = _RepliesLate()
    worker = Worker(backend, Settings(), node_id="w", distributor="d")
    worker._loop = asyncio.get_running_loop()  # not started: the test drives it
    await backend.join("w", NodeKind.WORKER, "d", 60)
    await backend.submit("c", [NewRequest("k", b"payload")], into="w", on_top=True)
    settling = asyncio.create_task(worker._settle(claim=1))
    await asyncio.wait_for(backend.made.wait(), 5)
    assert await backend.state("k") == RequestState.RUNNING  # claimed; the reply is on its way
    backend.lose = True
    beating = asyncio.create_task(worker._beat())
    done, _ = await asyncio.wait([beating], timeout=0.2)
    assert not done, "the reconcile went ahead of the claim's reply"
    backend.reply.set()
    await asyncio.wait_for(asyncio.gather(settling, beating), 5)
    assert worker.running_keys() == ["k"]
    assert await backend.state("k") == RequestState.RUNNING
    assert await backend.claim("w") is None  # not given back: nobody else runs it


class _ReconcilesSlowly(_LosingWrites):
    """Holds each reconcile back until `finish` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.reconciling = asyncio.Event()
        self.finish = asyncio.Event()

    async def reconcile(self, node: str, keep: Sequence[str]) -> int:
        self.reconciling.set()
        await self.finish.wait()
        return await super().reconcile(node, keep)


async def test_no_claim_goes_ahead_of_a_reconcile_on_its_way() -> None:
    """A claim made by the server before a reconcile that was sent first (with the worker's
    claims named as they were) would be given back by it while the worker runs it: claims
    wait for the reconcile to end."""
    backend = _ReconcilesSlowly()
    worker = Worker(backend, Settings(), node_id="w", distributor="d")
    worker._loop = asyncio.get_running_loop()  # not started: the test drives it
    await backend.join("w", NodeKind.WORKER, "d", 60)
    await backend.submit("c", [NewRequest("k", b"payload")], into="w", on_top=True)
    backend.lose = True
    beating = asyncio.create_task(worker._beat())
    await asyncio.wait_for(backend.reconciling.wait(), 5)
    settling = asyncio.create_task(worker._settle(claim=1))
    done, _ = await asyncio.wait([settling], timeout=0.2)
    assert not done, "a claim went ahead of the reconcile"
    assert await backend.state("k") == RequestState.PENDING
    backend.finish.set()
    await asyncio.wait_for(asyncio.gather(beating, settling), 5)
    assert worker.running_keys() == ["k"]
    assert await backend.state("k") == RequestState.RUNNING


class _RepliesLateAndReconciles(_RepliesLate):
    """`_RepliesLate`, and notes what each reconcile was told to keep."""

    kept: list[str] | None = None

    async def reconcile(self, node: str, keep: Sequence[str]) -> int:
        self.kept = list(keep)
        return await super().reconcile(node, keep)


async def test_a_completion_held_back_by_a_reconcile_is_named_in_it() -> None:
    """A completion that waits in the outbox while a reconcile waits for a call under way
    must still be named by it: taken out of the outbox before waiting, it was named nowhere,
    the reconcile gave its key back, and another worker ran the key again (chaos seed 32)."""
    backend = _RepliesLateAndReconciles()
    worker = Worker(backend, Settings(), node_id="w", distributor="d")
    worker._loop = asyncio.get_running_loop()  # not started: the test drives it
    await backend.join("w", NodeKind.WORKER, "d", 60)
    await backend.submit("c", [NewRequest("k", b"payload")], into="w", on_top=True)
    assert await backend.claim("w") == Claimed("k", b"payload")
    under_way = asyncio.create_task(worker._settle(claim=0))
    await asyncio.wait_for(backend.made.wait(), 5)
    backend.lose = True
    beating = asyncio.create_task(worker._beat())
    await asyncio.sleep(0)  # one turn: the in-memory backend answers without waiting
    assert worker.calls_in_flight.holding_back  # the reconcile waits for the call under way
    worker._outbox.add(Completion("k", b"outcome", cache=True), Outcome(value=1))
    settling = asyncio.create_task(worker._settle(claim=0))
    done, _ = await asyncio.wait([settling], timeout=0.2)
    assert not done, "a completion went ahead of the reconcile"
    backend.reply.set()
    await asyncio.wait_for(asyncio.gather(under_way, beating, settling), 5)
    assert backend.kept == ["k"]
    assert await backend.state("k") == RequestState.DONE
    assert await backend.claim("w") is None  # not queued again
