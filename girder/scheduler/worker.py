"""The worker: a local stack, a baton, and the depth-first relay.

The worker loop takes a baton, claims the top of its own stack and starts evaluating it; the
evaluation keeps the baton until it finishes or parks in `call_reentrant`. Parking pushes the
sub-requests nobody runs on top of this stack, passes the baton (so the loop goes on, usually
with exactly those sub-requests) and waits; when all are done the request takes a baton back.
So any number of requests may be parked, while one user function runs per baton. A worker whose
stack is empty volunteers at its distributor.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, ClassVar

from girder.backends.base import Claimed, NodeKind, StateBackend
from girder.config import Settings
from girder.errors import RequestError, SerializationError
from girder.functions import GridFunction, Request, resolve_function
from girder.scheduler.baton import Baton
from girder.scheduler.context import Evaluation, current_evaluation
from girder.scheduler.node import Node, error_lines
from girder.serialization import Outcome, RequestPayload

_FAIRNESS_SLICE = 0.005
"""Seconds a worker loop may run without yielding to the event loop."""


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
    ) -> None:
        super().__init__(
            backend, settings, node_id=node_id, distributor=distributor or settings.pool
        )
        self.baton = Baton(settings.concurrency)
        self._evaluations: set[asyncio.Task[None]] = set()
        self._next: Claimed | None = None
        """A request claimed together with the completion of the previous one."""

    def _start_loops(self) -> None:
        self._spawn(self._work_loop, "work")

    async def stop(self) -> None:
        for task in list(self._evaluations):
            task.cancel()
        await asyncio.gather(*self._evaluations, return_exceptions=True)
        await super().stop()

    # -- the loop ---------------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        backend = self.backend
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
            claimed, self._next = self._next, None
            if claimed is None:
                try:
                    claimed = await backend.claim(self.id)
                except BaseException:
                    self.baton.release()
                    raise
            if claimed is None:
                self.baton.release()
                assert self.distributor is not None
                await backend.volunteer(self.distributor, self.id)
                self._next = await backend.wait_and_claim(self.id, self.settings.idle_poll)
                continue
            await self._start_evaluation(claimed)

    async def _start_evaluation(self, claimed: Claimed) -> None:
        """Evaluate a claimed request; the baton passes to it. Sync functions run right here."""
        local = self.waiters.local(claimed.key)
        if local is not None:  # submitted here, immutable arguments: no need to decode
            payload, function = local
        else:
            try:
                payload = self.codec.decode_request(claimed.payload, claimed.key)
                function = resolve_function(payload.function)
            except (SerializationError, LookupError) as exc:
                await self._reject(claimed.key, exc)
                return
        evaluation = Evaluation(
            self, claimed.key, payload.job, payload.name, payload.args, payload.kwargs
        )
        if function.is_async:
            await self._evaluate_async(evaluation, function)
        else:
            await self._evaluate_sync(evaluation, function, payload)

    async def _reject(self, key: str, exc: Exception) -> None:
        """Fail a request that cannot even start (bad payload, unknown function)."""
        readable = (await self.readables([key]))[0]
        message = f"{exc} (on node {self.id})"
        self.log.error("request rejected", key=key, request=readable, error=message)
        try:
            error = RequestError(readable, message, kind="invalid")
            await self.finish(key, error.request.__str__, Outcome(error=error), cache=False)
        finally:
            self.baton.release()

    async def _evaluate_sync(
        self, evaluation: Evaluation, function: GridFunction[..., Any], payload: RequestPayload
    ) -> None:
        token = current_evaluation.set(evaluation)
        try:
            outcome = Outcome(value=function.fn(*payload.args, **payload.kwargs))
        except Exception as exc:
            outcome = self._failure(evaluation, exc)
        finally:
            current_evaluation.reset(token)
        await self._conclude(evaluation, function, outcome, inline=True)

    async def _evaluate_async(
        self, evaluation: Evaluation, function: GridFunction[..., Any]
    ) -> None:
        """Run the coroutine in its own task, so that `asyncio.current_task()`, timeouts and
        cancel scopes inside it concern it alone. From Python 3.12 the task starts eagerly:
        a request that finishes in its first step (most leaves) never waits for the loop."""
        token = current_evaluation.set(evaluation)
        try:
            coroutine = function.fn(*evaluation.args, **evaluation.kwargs)
            task = _new_task(self._run_evaluation(evaluation, function, coroutine))
        finally:
            current_evaluation.reset(token)
        if not task.done():
            self._evaluations.add(task)
            task.add_done_callback(self._evaluations.discard)

    async def _run_evaluation(
        self,
        evaluation: Evaluation,
        function: GridFunction[..., Any],
        coroutine: Coroutine[Any, Any, Any],
    ) -> None:
        try:
            outcome = Outcome(value=await coroutine)
        except Exception as exc:
            outcome = self._failure(evaluation, exc)
        except BaseException:  # cancelled (the worker stops): pass the baton on, finish nothing
            self._pass_baton(evaluation)
            raise
        await self._conclude(evaluation, function, outcome)

    async def _conclude(
        self,
        evaluation: Evaluation,
        function: GridFunction[..., Any],
        outcome: Outcome,
        *,
        inline: bool = False,
    ) -> None:
        """Finish a request and pass its baton on. When the worker loop is the one that gets the
        baton next (it ran this request inline, or it waits for the baton), also claim the loop's
        next request in the same backend step."""
        prefetch = (
            self._next is None
            and self.baton.idle_after_release()
            and (inline or self.baton.worker_waiting())
        )
        try:
            claimed = await self.finish(
                evaluation.key,
                evaluation.readable,
                outcome,
                cache=function.cache,
                claim_next=prefetch,
            )
            self.stats.ran += 1
            if claimed is not None:
                self._next = claimed
        finally:
            self._pass_baton(evaluation)

    def _pass_baton(self, evaluation: Evaluation) -> None:
        if evaluation.holds_baton:
            evaluation.holds_baton = False
            self.baton.release()

    def _failure(self, evaluation: Evaluation, exc: Exception) -> Outcome:
        readable = evaluation.readable()
        if isinstance(exc, RequestError):
            error = RequestError(readable, exc.message, error_lines(exc), exc.causes, kind=exc.kind)
        else:
            error = RequestError(readable, f"{type(exc).__name__}: {exc}", error_lines(exc))
        self.log.info("request failed", key=evaluation.key, job=evaluation.job, error=error.message)
        return Outcome(error=error)

    # -- re-entrant requests ----------------------------------------------------------------------

    async def reentrant(self, evaluation: Evaluation, requests: list[Request]) -> list[Any]:
        """`call_reentrant` inside `evaluation`: push, pass the baton, park, take it back."""
        batch = await self.request(
            requests,
            job=evaluation.job,
            into=self.id,
            on_top=True,
            waiter=(evaluation.key, evaluation.readable),
        )
        if not batch.future.done():
            batch.on_ready = self.baton.reserve
            evaluation.holds_baton = False
            self.baton.release()
            try:
                await batch.future
            except BaseException:  # cancelled: we hold no baton; give up any reservation
                if batch.ready:
                    self.baton.cancel_reservation()
                raise
            await self.baton.acquire_for_resume(reserved=True)
            evaluation.holds_baton = True
        return self.raise_failures(evaluation.readable, requests, batch)
