"""The worker: a local stack, a baton, and the depth-first relay.

The worker loop takes a baton, claims the top of its own stack and starts evaluating it; the
evaluation keeps the baton until it finishes or parks in `call_reentrant`. Parking pushes the
sub-requests nobody runs on top of this stack, passes the baton (so the loop goes on, usually
with exactly those sub-requests) and waits; when all are done the request takes a baton back.
So any number of requests may be parked, while one user function runs per baton. A worker whose
stack is empty volunteers at its distributor.

A worker talks to the backend once per step: it sends the completions it owes and claims its next
requests in one `complete_and_claim` (volunteering in that same step when nothing is left), or a
parking request submits its sub-requests and claims the first in one `submit_and_claim`. When
local work comes next (a parked request the outcome made ready, or the next of several claimed
requests) a completion waits in the `Outbox` for that work's own step, at most `_CLAIM_BUDGET`;
waiters inside this node learn each outcome at once. While it runs sync functions that take
little time a worker claims several requests at once, as many as fit in `_CLAIM_BUDGET` by their
recent duration.

A claim is only good while the worker's lease is: a worker stalled past its lease (stopped, its
host suspended) is reaped and its claims run elsewhere. So before it starts a claimed request, a
worker whose last confirmed heartbeat is older than the lease heartbeats first, and drops its
claims if it was reaped (`Worker.forgotten`); a healthy worker pays a clock compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Coroutine, Sequence
from typing import Any, ClassVar

from girder.backends.base import Claimed, NodeKind, RequestState, StateBackend
from girder.config import Settings
from girder.errors import BlobLost, Cancelled, RequestError, SerializationError, type_name
from girder.functions import GridFunction, Request
from girder.log import debug_enabled
from girder.scheduler.baton import Baton
from girder.scheduler.children import ChildError, ChildPool, pool_size
from girder.scheduler.context import Evaluation, current_evaluation
from girder.scheduler.lending import suspensions
from girder.scheduler.node import Node, error_lines
from girder.scheduler.offload import Ran, SyncRunner
from girder.scheduler.outbox import Outbox
from girder.scheduler.waiters import Batch, Feed
from girder.security import resolve_allowed
from girder.serialization import Blob, Outcome
from girder.watchdog import WatchPipe

_FAIRNESS_SLICE = 0.005
"""Seconds a worker loop may run without yielding to the event loop."""

_CLAIM_BUDGET = 0.001
"""Seconds of quick sync work a worker claims at once, and the longest it holds back the
completion of a finished sync request to send it together with the next ones."""

_RETRY_DELAY = 0.5
"""Seconds before completions that could not be sent are tried again."""

_TAKEN = (RequestState.RUNNING, RequestState.DONE)
"""States of a key that a reaped worker no longer runs for anyone (see `Worker.forgotten`)."""

_MAX_CLAIM = 32
"""The most requests a worker claims, or completions it holds back, at once."""


def _new_task(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task for an evaluation: eager where Python has eager tasks (3.12+)."""
    loop = asyncio.get_running_loop()
    if _EAGER_TASKS:
        return asyncio.Task(coroutine, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return loop.create_task(coroutine)


_EAGER_TASKS = sys.version_info >= (3, 12)


class Worker(Node):
    """Runs requests from its own stack; parks re-entrant callers without blocking."""

    kind: ClassVar[NodeKind] = NodeKind.WORKER

    def __init__(
        self,
        backend: StateBackend,
        settings: Settings,
        *,
        node_id: str | None = None,
        distributor: str | None = None,
        children: ChildPool | None = None,
    ) -> None:
        """`children`: where slow sync functions run with `sync_offload="process"`, shared by
        the workers of a grid (which closes it); when None, the worker makes its own."""
        super().__init__(
            backend, settings, node_id=node_id, distributor=distributor or settings.pool
        )
        self.baton = Baton(settings.concurrency, loans=settings.io_concurrency)
        self._evaluations: dict[str, asyncio.Task[None]] = {}
        """The tasks of async requests under way here, by key."""
        self._watch = WatchPipe.from_environment()
        """The pipe to this worker's supervisor, which enforces sync time limits (if any)."""
        self._cancelled: dict[str, str] = {}
        """Keys running here whose job was cancelled, and that job: the run stops and the key
        completes with a `Cancelled` error."""
        self._claimed: deque[Claimed] = deque()
        """Requests claimed and not yet started, in order."""
        self._running: set[str] = set()
        """Keys started here whose outcome is not in the outbox yet."""
        self._dropped: set[str] = set()
        """Sync runs given up after this worker was reaped: their outcome is thrown away."""
        self._volunteered = False
        """The last claim found nothing and volunteered: wait for work before claiming again."""
        self._outbox = Outbox(self._send_late, budget=_CLAIM_BUDGET, limit=_MAX_CLAIM)
        self._late_sends: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._claim_size = 1
        self._sync_seconds = 0.0
        """Recent average duration of the sync functions run here."""
        self._own_children: ChildPool | None = None
        if children is None and settings.sync_offload == "process":
            children = self._own_children = ChildPool(pool_size(settings.concurrency))
        self._sync = SyncRunner(self.id, children)
        """Runs sync functions: inline while quick, else in this worker's thread or children."""

    def _start_loops(self) -> None:
        self._spawn(self._work_loop, "work")

    async def stop(self) -> None:
        self._stopping = True  # from now on `_before_leaving` sends what the outbox holds
        for task in list(self._evaluations.values()):
            task.cancel()
        tasks = [*self._evaluations.values(), *self._late_sends]
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().stop()
        self._sync.close()
        if self._own_children is not None:
            await self._own_children.close()

    async def _before_leaving(self) -> None:
        if self._outbox:
            await self._settle(claim=0)

    # -- the loop ---------------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        clock = asyncio.get_running_loop().time
        last_yield = clock()
        while True:
            if clock() - last_yield > _FAIRNESS_SLICE:
                # With an in-memory backend nothing below awaits for real: give the other
                # nodes' loops (heartbeats, distributor) a turn now and then.
                await asyncio.sleep(0)
                last_yield = clock()
            if not self.baton.try_acquire_for_work():
                await self.baton.acquire_for_work()
            if not self._claimed and not self._volunteered:
                try:
                    await self._settle(claim=self._claim_size)
                except BaseException:
                    self.baton.release()
                    raise
            if self._claimed and self.lease_may_have_lapsed() and not await self._claims_kept():
                self.baton.release()
                continue  # every claim was stale: claim afresh
            if not self._claimed:
                self.baton.release()
                self._volunteered = False
                await self.calls_in_flight.opened()
                with self.calls_in_flight:
                    claimed = await self.backend.wait_and_claim(self.id, self.settings.idle_poll)
                    if claimed is not None:
                        self._claimed.append(claimed)
                continue
            await self._start_evaluation(self._claimed.popleft())

    async def _claims_kept(self) -> bool:
        """This worker may have outlived its lease (a stop, a suspended host, a blocked loop):
        confirm it before starting a claim, which a reaper may have given to others meanwhile
        (`forgotten` then drops them all). Whether claims are left to start."""
        try:
            await self.confirm_lease()
        except BaseException:
            self.baton.release()
            raise
        return bool(self._claimed)

    def adopt(self, claimed: list[Claimed]) -> None:
        self._claimed.extend(claimed)

    def cancel_notice(self, key: str, job: str) -> None:
        """Stop a run of `key` here (its coroutine gets `CancelledError` at its current await;
        a sync one in a child process has its child killed; one in a thread, which cannot be
        interrupted, finishes but its value is dropped); a key not run here is
        `Node.cancel_notice`'s."""
        claimed = any(item.key == key for item in self._claimed)
        if key not in self._running and not claimed:
            super().cancel_notice(key, job)
            return
        self._cancelled[key] = job
        task = self._evaluations.get(key)
        if task is not None:
            task.cancel()
        else:
            self._sync.stop(key)

    async def _end_cancelled(self, key: str, job: str) -> None:
        """Complete a claimed key that was cancelled before it started."""
        del self._cancelled[key]
        source = self.waiters.source(key)
        readable = source.readable() if source is not None else f"request {key}"
        try:
            await self.finish(
                key, lambda: readable, Outcome(error=Cancelled(readable, job)), cache=False
            )
        finally:
            self._running.discard(key)
            self.baton.release()

    async def forgotten(self) -> None:
        """This worker was reaped (its lease lapsed: a partition, a stall) and joins again next.
        The reaper gave the keys it ran and had claimed to others, so that the grid pays for one
        run of each, not two. Every claim not started yet is dropped: the reaper queued it again
        (or the backend lost it, and its waiters submit it again). Of the runs under way, those
        whose key is now done or running (elsewhere, or here again: `reconcile` then gives it
        back) are dropped; a key the backend does not know, or that is pending, runs on here
        (its completion is accepted: nobody else runs it)."""
        stale = self._drop_claims()
        keys = list(self._running)
        states = await asyncio.gather(*(self.backend.state(key) for key in keys))
        lost = {key for key, state in zip(keys, states, strict=True) if state in _TAKEN}
        for key in lost:
            self._drop(key)
        if lost or stale:
            self.log.warning(
                "lease lost: dropped the runs given to others",
                count=len(lost) + len(stale),
                claims=len(stale),
                keys=sorted(lost.union(stale)),
            )

    def writes_lost(self) -> None:
        """Drop every claim not started yet: one whose write was lost is pending on a work
        list again (whoever claims it next runs it, here or elsewhere: holding it too would
        run it twice); one that was kept is not in `running_keys` now, so the reconcile that
        follows gives it back."""
        stale = self._drop_claims()
        if stale:
            self.log.warning("writes lost: gave back the claims not started", count=len(stale))

    def _drop_claims(self) -> set[str]:
        """Forget every claim not started yet (and its cancellation, if any); their keys."""
        stale = {claimed.key for claimed in self._claimed}
        self._claimed.clear()
        for key in stale.difference(self._running):
            self._cancelled.pop(key, None)
        return stale

    def _drop(self, key: str) -> None:
        """Give up a run without completing it: an async one is cancelled, a sync one in a
        child process has its child killed, one in the thread (which cannot be interrupted)
        finishes and its outcome is thrown away."""
        if key not in self._running:
            return
        self._running.discard(key)
        self._cancelled.pop(key, None)
        task = self._evaluations.get(key)
        if task is not None:
            task.cancel()
        else:
            self._dropped.add(key)
            self._sync.stop(key)

    def running_keys(self) -> list[str]:
        """Claimed, started, or finished with the completion still held."""
        return [*self._running, *(claimed.key for claimed in self._claimed), *self._outbox.keys()]

    async def _settle(self, *, claim: int) -> None:
        """Send the held-back completions and claim up to `claim` requests, in one backend
        step that also volunteers this worker when there is nothing to claim."""
        await self.calls_in_flight.opened()
        with self.calls_in_flight:  # its completions and claims count as held
            sent = self._outbox.take()  # inside: a reconcile names what the outbox holds
            try:
                claimed = await self.backend.complete_and_claim(
                    self.id,
                    [completion for completion, _ in sent],
                    claim=claim,
                    volunteer_at=self.distributor,
                )
            except BaseException:
                self._outbox.put_back(sent)  # sent again later (a repeat changes nothing)
                raise
            self._claimed.extend(claimed)
        if claim:
            self._volunteered = not claimed
        for completion, outcome in sent:
            # Whoever here started waiting for the key after it finished: the backend only
            # notifies other nodes.
            self.waiters.resolve(completion.key, outcome)

    def _send_late(self) -> None:
        """The outbox's timer ran out: send what it holds now."""
        if not self._outbox or self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._settle(claim=0))
        self._late_sends.add(task)
        task.add_done_callback(self._after_late_send)

    def _after_late_send(self, task: asyncio.Task[None]) -> None:
        self._late_sends.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log.warning("sending completions failed; retrying", error=repr(error))
            asyncio.get_running_loop().call_later(_RETRY_DELAY, self._send_late)

    async def _start_evaluation(self, claimed: Claimed) -> None:
        """Evaluate a claimed request; the baton passes to it. Sync functions run in this turn of
        the loop: inline while quick, off the loop (a thread or a child process) once slow (see
        `SyncRunner`).

        A key this worker already runs (it was reaped while stalled, its claim went back to the
        queue and came back here) is not started twice: the run under way completes it."""
        if claimed.key in self._running:
            self.baton.release()
            return
        self._running.add(claimed.key)
        job = self._cancelled.get(claimed.key)
        if job is not None:  # cancelled before it started
            await self._end_cancelled(claimed.key, job)
            return
        local = self.waiters.local(claimed.key)
        if local is not None:  # submitted here, immutable arguments: no need to decode
            payload, function = local
        else:
            try:
                payload = self.codec.decode_request(claimed.payload, claimed.key)
                if payload.blob is not None:  # large arguments: fetched from their blob
                    data = await self.backend.get_blob(payload.blob.digest)
                    self.codec.load_arguments(payload, data, claimed.key)
                function = resolve_allowed(payload.function, self.settings)
            except (SerializationError, LookupError) as exc:
                await self._reject(claimed.key, exc)
                return
        evaluation = Evaluation(
            self, claimed.key, payload.job, payload.name, payload.args, payload.kwargs
        )
        if debug_enabled():
            self._debug("request started", evaluation)
        if function.is_async:
            self._claim_size = 1  # it may park: claim no more than the stack's top
            await self._evaluate_async(evaluation, function)
        else:
            await self._evaluate_sync(evaluation, function)

    async def _reject(self, key: str, exc: Exception) -> None:
        """Fail a request that cannot even start (bad payload, unknown function). One whose
        large arguments the backend lost fails with kind "lost", uncached: its waiters hold
        the arguments and submit it again (see `Node.settle`)."""
        readable = (await self.readables([key]))[0]
        message = f"{exc} (on node {self.id})"
        lost = isinstance(exc, BlobLost)
        log = self.log.warning if lost else self.log.error
        log("request rejected", key=key, request=readable, error=message)
        self.stats.failed += 1
        try:
            error = RequestError(readable, message, kind="lost" if lost else "invalid")
            await self.finish(key, error.request.__str__, Outcome(error=error), cache=False)
        finally:
            self._running.discard(key)
            self.baton.release()

    async def _evaluate_sync(
        self, evaluation: Evaluation, function: GridFunction[..., Any]
    ) -> None:
        token = current_evaluation.set(evaluation)
        limit = function.timeout
        if limit is not None and self._watch is not None:
            self._watch.started(self.id, evaluation.key, limit)
        try:
            ran = await self._sync.run(function, evaluation)
        finally:
            current_evaluation.reset(token)
            if limit is not None and self._watch is not None:
                self._watch.ended()
        # Stopped: cancelled, its child killed; `_conclude` says so.
        outcome = Outcome() if ran.stopped else self._sync_outcome(evaluation, ran, limit)
        await self._conclude(evaluation, function, outcome, inline=True)

    def _sync_outcome(self, evaluation: Evaluation, ran: Ran, limit: float | None) -> Outcome:
        """What a sync function's run came to (and count how long it took)."""
        if ran.error is None:
            outcome = Outcome(value=ran.value)
        else:
            outcome = self._failure(evaluation, ran.error)
        self._time_sync(ran.seconds)
        if limit is not None and ran.seconds > limit:  # no supervisor killed it: drop the value
            outcome = Outcome(error=_timed_out(evaluation, limit))
        return outcome

    def _time_sync(self, seconds: float) -> None:
        """Track how long sync functions take, and claim as many as fit in the budget."""
        average = self._sync_seconds = (
            seconds if self._sync_seconds == 0 else 0.8 * self._sync_seconds + 0.2 * seconds
        )
        self._claim_size = max(1, min(_MAX_CLAIM, int(_CLAIM_BUDGET / max(average, 1e-9))))

    async def _evaluate_async(
        self, evaluation: Evaluation, function: GridFunction[..., Any]
    ) -> None:
        """Run the coroutine in its own task, so that `asyncio.current_task()`, timeouts and
        cancel scopes inside it concern it alone. From Python 3.12 the task starts eagerly:
        a request that finishes in its first step (most leaves) never waits for the loop."""
        token = current_evaluation.set(evaluation)
        try:
            coroutine = function.fn(*evaluation.args, **evaluation.kwargs)
            if function.is_stream:
                coroutine = self._answers(evaluation, coroutine)
            awaitable: Awaitable[Any] = coroutine
            if self.settings.io_concurrency:
                awaitable = suspensions(coroutine, lambda: self._lend(evaluation))
            task = _new_task(self._run_evaluation(evaluation, function, awaitable))
        finally:
            current_evaluation.reset(token)
        if not task.done():
            key = evaluation.key
            self._evaluations[key] = task
            task.add_done_callback(lambda _: self._evaluations.pop(key, None))

    def _lend(self, evaluation: Evaluation) -> None:
        """The evaluation suspended: when it is not parked on the grid it waits on I/O (or a
        sleep, a lock...): lend its baton so that the worker goes on meanwhile."""
        if evaluation.holds_baton and not evaluation.parked and self.baton.lend():
            evaluation.holds_baton = False
            evaluation.lent = True

    def _end_loan(self, evaluation: Evaluation) -> None:
        if evaluation.lent:
            evaluation.lent = False
            self.baton.end_loan()

    async def _run_evaluation(
        self,
        evaluation: Evaluation,
        function: GridFunction[..., Any],
        coroutine: Awaitable[Any],
    ) -> None:
        try:
            value = await self._within_limit(function.timeout, coroutine)
            outcome = Outcome(value=value, answer=evaluation.answers)
        except _OverLimit:
            outcome = Outcome(error=_timed_out(evaluation, function.timeout or 0))
            await self._cancel_below(evaluation.key)
        except Exception as exc:
            outcome = self._failure(evaluation, exc)
        except asyncio.CancelledError:
            if self._stopping or evaluation.key not in self._cancelled:
                # The worker stops: pass the baton on, finish nothing (leaving hands it back).
                self._running.discard(evaluation.key)
                self._let_go(evaluation)
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # cancelled on purpose: it concludes like any other run
            outcome = Outcome()  # replaced below
        except BaseException:
            self._running.discard(evaluation.key)
            self._let_go(evaluation)
            raise
        await self._conclude(evaluation, function, outcome)

    @staticmethod
    async def _within_limit(limit: float | None, coroutine: Awaitable[Any]) -> Any:
        """Await `coroutine`, cancelled after `limit` seconds (parked time included)."""
        if limit is None:
            return await coroutine
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                return await coroutine
        except TimeoutError:
            if scope.expired():
                raise _OverLimit from None
            raise  # the function's own timeout: its error

    async def _cancel_below(self, key: str) -> None:
        """A request ran out of time: let go of what it waits for (what nothing else needs
        stops, as when a job is cancelled)."""
        while (await self.backend.cancel(self.id, f"time limit of {key}", below=key)).remaining:
            pass

    async def _answers(self, evaluation: Evaluation, answers: AsyncGenerator[Any, None]) -> Any:
        """Drive a streaming function: publish each answer as it comes (partial outcomes that
        streams of the key read); the last one is the value."""
        last: Any = None
        try:
            async for last in answers:
                evaluation.answers += 1
                partial = Outcome(value=last, final=False, answer=evaluation.answers)
                await self.publish(evaluation.key, evaluation.readable, partial)
        finally:
            await answers.aclose()
        if not evaluation.answers:
            raise ValueError("the streaming grid function yielded no answer")
        return last

    async def _conclude(
        self,
        evaluation: Evaluation,
        function: GridFunction[..., Any],
        outcome: Outcome,
        *,
        inline: bool = False,
    ) -> None:
        """Finish a request and pass its baton on.

        Waiters in this node get the outcome at once; the completion goes to the backend now or
        with the next step (see `_send_or_hold`)."""
        try:
            if evaluation.key in self._dropped:  # given to others while this worker was away
                self._dropped.discard(evaluation.key)
                return
            job = self._cancelled.pop(evaluation.key, None)
            if job is not None:  # nothing cancelled is cached, whatever the run came to
                outcome = Outcome(error=Cancelled(evaluation.readable(), job))
            blobs: list[Blob] = []
            try:
                completion = self.completion(
                    evaluation.key,
                    evaluation.readable,
                    outcome,
                    function.cache,
                    blobs=blobs,
                    function=function,
                )
                if blobs:  # a large value: its blob is stored before the completion is sent
                    completion = await self.stored(completion, evaluation.readable, blobs)
            except Exception:
                await self._give_back(evaluation)
                return
            self.stats.ran += 1
            if outcome.error is not None:
                self.stats.failed += 1
            if debug_enabled():
                self._debug("request finished", evaluation, failed=outcome.error is not None)
            self._outbox.add(completion, outcome)
            self._running.discard(evaluation.key)
            self.waiters.resolve(evaluation.key, outcome)
            if evaluation.lent:
                await self._send_or_hold_lent()
            else:
                await self._send_or_hold(inline=inline)
        finally:
            self._let_go(evaluation)

    async def _give_back(self, evaluation: Evaluation) -> None:
        """Making a run's completion failed (a bug, or an error that escaped the backend's
        retries; a blob that cannot be stored fails the request instead, see `stored`): the key
        goes back to the grid to run again, rather than stay claimed here and run by nobody."""
        key = evaluation.key
        self.log.exception(
            "finishing a request failed; giving it back", key=key, job=evaluation.job
        )
        self._running.discard(key)
        async with self.calls_in_flight.held_back():  # its claims all named (see inflight)
            await self.backend.reconcile(self.id, self.running_keys())

    def _debug(self, event: str, evaluation: Evaluation, **fields: Any) -> None:
        self.log.debug(
            event,
            request=evaluation.readable(),
            key=evaluation.key,
            job=evaluation.job,
            **fields,
        )

    async def _send_or_hold(self, *, inline: bool) -> None:
        """Send the outbox now, or hold it for the step of the local work that comes next: a
        claimed request (run inline) or a parked one just made ready (held back at most
        `_CLAIM_BUDGET`). When the worker loop gets the baton next and has nothing claimed, the
        step that sends also claims its next requests."""
        local_next = (inline and self._claimed) or not self.baton.idle_after_release()
        if local_next and self.backend.round_trips and self._outbox.may_hold():
            self._outbox.hold()
            return
        prefetch = (
            not self._claimed
            and self.baton.idle_after_release()
            and (inline or self.baton.worker_waiting())
        )
        await self._settle(claim=self._claim_size if prefetch else 0)

    async def _send_or_hold_lent(self) -> None:
        """Send the outbox of a request that ran on a lent baton: no baton passes on, so there
        is nothing to claim for; several such requests ending together share a step."""
        if self.backend.round_trips and self._outbox.may_hold():
            self._outbox.hold()
            return
        await self._settle(claim=0)

    def _let_go(self, evaluation: Evaluation) -> None:
        """The evaluation ended: pass its baton on, or end its loan."""
        self._pass_baton(evaluation)
        self._end_loan(evaluation)

    def _pass_baton(self, evaluation: Evaluation) -> None:
        if evaluation.holds_baton:
            evaluation.holds_baton = False
            self.baton.release()

    def _failure(self, evaluation: Evaluation, exc: Exception) -> Outcome:
        readable = evaluation.readable()
        if isinstance(exc, ChildError):  # raised in a child process: reported there
            error = RequestError(
                readable, exc.message, exc.lines, kind=exc.kind, exc_type=exc.exc_type
            )
        elif isinstance(exc, RequestError):
            error = RequestError(
                readable,
                exc.message,
                error_lines(exc),
                exc.causes,
                kind=exc.kind,
                exc_type=exc.exc_type,
            )
        else:
            error = RequestError(
                readable,
                f"{type(exc).__name__}: {exc}",
                error_lines(exc),
                exc_type=type_name(type(exc)),
            )
        self.log.info("request failed", key=evaluation.key, job=evaluation.job, error=error.message)
        return Outcome(error=error)

    # -- re-entrant requests ----------------------------------------------------------------------

    async def reentrant(self, evaluation: Evaluation, requests: list[Request]) -> list[Any]:
        """`call_reentrant` inside `evaluation`: push, pass the baton, park, take it back."""
        # When the worker loop gets the baton next, claim its next request in the same step
        # (not when a sibling flow gave the evaluation's baton up already: nothing passes now).
        loop_is_next = (
            evaluation.holds_baton
            and self.baton.idle_after_release()
            and self.baton.worker_waiting()
        )
        batch = await self._submit_and_park(
            evaluation, requests, claim=1 if loop_is_next and not self._claimed else 0
        )
        await self.settle(requests, batch, lambda lost: self._submit_and_park(evaluation, lost))
        return self.raise_failures(evaluation.readable, requests, batch)

    async def _submit_and_park(
        self, evaluation: Evaluation, requests: Sequence[Request], claim: int = 0
    ) -> Batch:
        """Push `evaluation`'s sub-requests on this worker's stack; park until all are done."""
        batch = await self.request(
            requests,
            job=evaluation.job,
            into=self.id,
            on_top=True,
            waiter=(evaluation.key, evaluation.readable),
            claim=claim,
        )
        if not batch.future.done():
            await self._park(evaluation, batch)
        return batch

    async def stream(self, evaluation: Evaluation, request: Request) -> AsyncIterator[Any]:
        """`girder.stream` inside `evaluation`: push the request like `reentrant` does, then
        park until each answer comes (passing the baton), and take the baton back for it."""
        loop_is_next = (
            evaluation.holds_baton
            and self.baton.idle_after_release()
            and self.baton.worker_waiting()
        )
        claim = 1 if loop_is_next and not self._claimed else 0

        async def submit(feed: Feed) -> None:
            nonlocal claim
            await self.request(
                [request],
                job=evaluation.job,
                into=self.id,
                on_top=True,
                waiter=(evaluation.key, evaluation.readable),
                claim=claim,
                feed=feed,
            )
            claim = 0  # submitted again (an answer lost): the loop claims for itself

        async def wait(feed: Feed) -> None:
            await self._park_for(evaluation, feed)

        async with contextlib.aclosing(self.answers(request, submit, wait)) as answers:
            async for outcome in answers:
                yield self.stream_answer(evaluation.readable, request, outcome)

    async def _park_for(self, evaluation: Evaluation, feed: Feed) -> None:
        """Wait for `feed`'s next answer without the baton, then take the evaluation's baton
        back (reserved the moment the answer arrives), as `_park` does for a batch."""
        feed.on_ready = self.baton.reserve
        evaluation.parked += 1
        self._pass_baton(evaluation)
        try:
            await feed.wait()
        except BaseException:  # cancelled: we hold no baton; give up any reservation
            evaluation.parked -= 1
            if feed.ready():
                self.baton.cancel_reservation()
            raise
        finally:
            feed.on_ready = None
        try:
            await self._resume(evaluation)
        finally:
            evaluation.parked -= 1
        if evaluation.holds_baton and (evaluation.parked or evaluation.key not in self._running):
            asyncio.get_running_loop().call_soon(self._baton_back_if_idle, evaluation)

    # -- several flows of one evaluation ----------------------------------------------------------
    #
    # A grid function may await several `call_reentrant` at once (`asyncio.gather`, a task group).
    # The baton is the evaluation's: a flow that parks gives it up if the evaluation holds it (so a
    # worker with one baton runs the sub-requests); a flow that resumes takes it back (waiting its
    # turn) unless the evaluation already holds it; so it never holds two. While other flows stay
    # parked, the baton goes back at the resumed flow's next suspension point: the evaluation may
    # now only wait for those flows, and holding a baton for that could deadlock the worker.

    async def _park(self, evaluation: Evaluation, batch: Batch) -> None:
        """Wait for `batch` without the baton, then take the evaluation's baton back."""
        batch.on_ready = self.baton.reserve
        evaluation.parked += 1
        self._pass_baton(evaluation)
        try:
            await batch.future
        except BaseException:  # cancelled: we hold no baton; give up any reservation
            evaluation.parked -= 1
            if batch.ready:
                self.baton.cancel_reservation()
            raise
        try:
            await self._resume(evaluation)
        finally:
            evaluation.parked -= 1
        if evaluation.holds_baton and (evaluation.parked or evaluation.key not in self._running):
            asyncio.get_running_loop().call_soon(self._baton_back_if_idle, evaluation)

    async def _resume(self, evaluation: Evaluation) -> None:
        """Turn this flow's reservation into the evaluation's baton, or give it up when the
        evaluation holds the baton already (a sibling flow took it back)."""
        lock = evaluation.resuming = evaluation.resuming or asyncio.Lock()
        reserved = True
        try:
            async with lock:
                if evaluation.holds_baton:
                    return
                reserved = False
                await self.baton.acquire_for_resume(reserved=True)
                evaluation.holds_baton = True
                self._end_loan(evaluation)
        finally:
            if reserved:
                self.baton.cancel_reservation()

    def _baton_back_if_idle(self, evaluation: Evaluation) -> None:
        """After a resumed flow's step: pass the baton on if sibling flows are still parked, or
        if the evaluation has finished (a flow it left behind must not keep a baton)."""
        if evaluation.parked or evaluation.key not in self._running:
            self._pass_baton(evaluation)


class _OverLimit(Exception):
    """A request ran past its function's time limit."""


def _timed_out(evaluation: Evaluation, limit: float) -> RequestError:
    return RequestError(
        evaluation.readable(),
        f"took longer than its time limit of {limit:g} s (@girder.function(timeout=...))",
        kind="timeout",
    )
