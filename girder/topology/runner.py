"""Running a topology: the caller's side of `grid.run`.

The runner lives in the caller's process, on its event loop. Spouts run here; every worker
invocation (one value, or one bundle) is an ordinary grid request of `run_stage`, so it runs on
any worker of the grid and is claimed, leased and recovered like any request. The runner does the
coordination: it bundles values by seq id, runs a sequential stage's bundles in order, bounds
what waits at each stage (back-pressure), and sends each result to the stage's downstream once.

Words used below. A stage *holds* a seq id from the moment a value of it arrives until the
invocation that handles it has finished and its result has been delivered downstream; that is
also how long the value takes one of the stage's `max_pending` slots (a bundle takes one slot).
`SKIP` stands for "nothing for this seq id" (a function returned None or failed, or a bundle
could not complete): it travels like a value, so that a bundle waiting for it is dropped instead
of waiting for ever, and is never passed to a function. The *horizon* of a stage is a seq id
below which it will never deliver anything again (see `_horizon`); a sequential stage runs its
smallest bundle only when no upstream's horizon is below it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from girder.errors import RequestError, StageError
from girder.functions import Request
from girder.log import node_logger
from girder.scheduler.node import error_lines
from girder.topology.capture import captured
from girder.topology.model import Stage, Topology
from girder.topology.stage import Invocation, Output, Printed, run_stage, run_stage_debugged

if TYPE_CHECKING:
    from girder.grid import Grid

Callback = Callable[[str, int | None, Any], Awaitable[None] | None]
"""A debugger's `callback(stage, seq, item)`: item is an output, or a `Printed` line."""

SKIP: Any = object()
_END: Any = object()
_INF = float("inf")


class _Slots:
    """At most `size` values held at once; `take` waits for a free slot, first come first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        while self.used >= self.size:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._wake_next()  # it was woken, then cancelled: wake another instead
                elif future in self._waiting:
                    self._waiting.remove(future)
                raise
        self.used += 1

    def give(self) -> None:
        self.used -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                return


class _Bundle:
    """The values of one seq id at a bundled stage, by upstream."""

    __slots__ = ("reports", "running", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.reports: dict[str, Any] = {}
        self.running = False


class _StageState:
    """What one worker stage holds during a run."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.slots = _Slots(stage.max_pending)
        self.bundles: dict[int, _Bundle] = {}
        """Open bundles by seq id (a bundled stage)."""
        self.held: Counter[int] = Counter()
        """Seq ids of the values it holds (a stage without `bundle`)."""

    def held_seqs(self) -> Any:
        return self.bundles.keys() if self.stage.bundle else self.held.keys()

    def complete(self, bundle: _Bundle) -> bool:
        return len(bundle.reports) == len(self.stage.upstream)


class TopologyRun:
    """One run of a topology on a grid (see the module docstring)."""

    def __init__(
        self,
        grid: Grid,
        topology: Topology,
        debug: Mapping[str, Callback] | None,
        stop_on_error: bool,
    ) -> None:
        topology.validate()
        self.grid = grid
        self.topology = topology
        self.debug = _checked_debug(topology, debug)
        self.stop_on_error = stop_on_error
        self.run_id = uuid.uuid4().hex
        self.log = node_logger(f"topology:{topology.name}", run=self.run_id)
        self._numbers = itertools.count()
        self._states = {s.name: _StageState(s) for s in topology.stages.values() if not s.is_spout}
        self._bundled = [state for state in self._states.values() if state.stage.bundle]
        self._ordered_spouts = _spouts_before_sequential(topology)
        self._spout_last: dict[str, float] = {s.name: -_INF for s in topology.spouts()}
        self._spouts_done: set[str] = set()
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked_emits: set[concurrent.futures.Future[None]] = set()
        """The `emit` calls of sync spouts under way (cancelled when the run stops)."""
        self._failure: BaseException | None = None
        self._ended = False
        self._stopping = False

    # -- the caller's iterator ------------------------------------------------------------------

    async def outputs(self) -> AsyncIterator[tuple[int | None, Any]]:
        """(seq, value) of the sinks as they come; (seq, StageError) for a failed stage."""
        for spout in self.topology.spouts():
            self._spawn(self._spout(spout))
        try:
            while (item := await self._out.get()) is not _END:
                seq, value, taken = item
                if taken is not None and not taken.done():
                    taken.set_result(None)  # the sink's slot is free again
                yield seq, value
            if self._failure is not None:
                raise self._failure
        finally:
            await self._stop()

    async def _stop(self) -> None:
        self._stopping = True
        for emit in list(self._blocked_emits):
            emit.cancel()  # a sync spout's thread gets CancelledError from its emit
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def stopped(self) -> bool:
        return self._stopping

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self._stopping:
            coroutine.close()
            return
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._fail(error)
        if not self._tasks and not self._stopping:
            self.advance()  # the last chance for bundles that can no longer complete
            if not self._tasks:
                self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._out.put_nowait(_END)

    def _fail(self, error: BaseException) -> None:
        """Stop the run: the caller's iterator raises `error`."""
        if self._failure is None:
            self._failure = error
            for task in self._tasks:
                task.cancel()
            self._stopping = True
            self._end()

    def _report(self, error: StageError) -> None:
        if self.stop_on_error:
            self._fail(error)
        else:
            self.log.info("stage failed", stage=error.stage, seq=error.seq, error=error.message)
            self._out.put_nowait((error.seq, error, None))

    # -- spouts ---------------------------------------------------------------------------------

    async def _spout(self, stage: Stage) -> None:
        emit = _Emitter(self, stage, asyncio.get_running_loop())
        watch = stage.name in self.debug
        try:
            with captured(emit.printed) if watch else nullcontext():
                if stage.is_async:
                    await stage.fn(emit)
                else:
                    await asyncio.to_thread(stage.fn, emit.blocking)
        except Exception as exc:
            where = f"{stage.name}(emit)"
            cause = RequestError(where, f"{type(exc).__name__}: {exc}", error_lines(exc))
            self._report(StageError(self.topology.name, stage.name, emit.last, cause))
        finally:
            self._spouts_done.add(stage.name)
            self.advance()

    async def emitted(self, stage: Stage, seq: int, value: Any) -> None:
        """A spout's `emit(seq, value)`: waits until every downstream has room for it."""
        if stage.name in self._ordered_spouts:
            self._spout_last[stage.name] = seq
        if stage.name in self.debug and value is not None:
            await self._notify(stage.name, seq, value)
        await self._deliver(stage, seq, SKIP if value is None else value)
        self.advance()

    # -- delivery -------------------------------------------------------------------------------

    async def _deliver(self, source: Stage, seq: int, value: Any) -> None:
        for name in source.downstream:
            await self._offer(self._states[name], source.name, seq, value)

    async def _offer(self, state: _StageState, source: str, seq: int, value: Any) -> None:
        """Hand one value to a stage, waiting for a slot when it takes a new one."""
        if not state.stage.bundle:
            if value is not SKIP:
                await state.slots.take()
                state.held[seq] += 1
                self._spawn(self._invoke(state, seq, value, source, None))
            return
        bundle = state.bundles.get(seq)
        if bundle is None:
            await state.slots.take()
            bundle = state.bundles.get(seq)  # another value of it may have opened it meanwhile
            if bundle is None:
                bundle = state.bundles[seq] = _Bundle(seq)
            else:
                state.slots.give()
        if source in bundle.reports or bundle.running:
            self.log.warning(
                "a second value of one seq id from one upstream; dropped",
                stage=state.stage.name,
                seq=seq,
                upstream=source,
            )
            return
        bundle.reports[source] = value
        if state.complete(bundle) and not state.stage.sequential:
            self._start(state, bundle)
        elif state.complete(bundle):
            self.advance()

    def _start(self, state: _StageState, bundle: _Bundle) -> None:
        bundle.running = True
        if any(value is SKIP for value in bundle.reports.values()):
            self._spawn(self._finish(state, bundle.seq, SKIP, bundle))
            return
        inputs = {name: bundle.reports[name] for name in state.stage.upstream}
        self._spawn(self._invoke(state, bundle.seq, inputs, None, bundle))

    async def _invoke(
        self,
        state: _StageState,
        seq: int,
        inputs: Any,
        upstream: str | None,
        bundle: _Bundle | None,
    ) -> None:
        stage = state.stage
        call = Invocation(
            self.topology.module,
            self.topology.name,
            stage.name,
            self.run_id,
            next(self._numbers),
            seq,
            inputs,
            upstream,
        )
        try:
            if stage.name in self.debug:
                value = await self._debugged(call)
            else:
                value = await self.grid.call(Request(run_stage, call))
        except RequestError as exc:
            self._report(StageError(self.topology.name, stage.name, seq, exc))
            value = None
        await self._finish(state, seq, SKIP if value is None else value, bundle)

    async def _debugged(self, call: Invocation) -> Any:
        value = None
        async for answer in self.grid.stream(run_stage_debugged, call):
            if isinstance(answer, Printed):
                await self._notify(call.stage, call.seq, answer)
            elif isinstance(answer, Output):
                value = answer.value
        if value is not None:
            await self._notify(call.stage, call.seq, value)
        return value

    async def _finish(
        self, state: _StageState, seq: int, value: Any, bundle: _Bundle | None
    ) -> None:
        """Send a result on, then let go of what the stage held for it."""
        try:
            if state.stage.downstream:
                await self._deliver(state.stage, seq, value)
            elif value is not SKIP:
                taken = asyncio.get_running_loop().create_future()
                self._out.put_nowait((seq, value, taken))
                await taken  # a sink's output holds its slot until the caller takes it
        finally:
            if bundle is not None:
                state.bundles.pop(seq, None)
            else:
                state.held[seq] -= 1
                if not state.held[seq]:
                    del state.held[seq]
            state.slots.give()
            self.advance()

    async def _notify(self, stage: str, seq: int | None, item: Any) -> None:
        result = self.debug[stage](stage, seq, item)
        if result is not None:
            await result

    # -- bundles that can run or can never complete ---------------------------------------------

    def advance(self) -> None:
        """Drop the bundles that can no longer complete, and start each sequential stage's next
        bundle when its turn has come. Called after every change."""
        if self._stopping or not self._bundled:
            return
        memo: dict[str, float] = {}
        for state in self._bundled:
            for bundle in list(state.bundles.values()):
                if not bundle.running and not state.complete(bundle):
                    self._drop_if_hopeless(state, bundle, memo)
            if state.stage.sequential:
                self._next_in_order(state, memo)

    def _drop_if_hopeless(
        self, state: _StageState, bundle: _Bundle, memo: dict[str, float]
    ) -> None:
        missing = [name for name in state.stage.upstream if name not in bundle.reports]
        if any(self._horizon(name, memo) > bundle.seq for name in missing):
            for name in missing:
                bundle.reports[name] = SKIP
            if not state.stage.sequential:
                self._start(state, bundle)

    def _next_in_order(self, state: _StageState, memo: dict[str, float]) -> None:
        """Start the smallest bundle when it is complete, nothing before it runs, and no
        upstream can still deliver a smaller seq id."""
        if not state.bundles or any(b.running for b in state.bundles.values()):
            return
        bundle = state.bundles[min(state.bundles)]
        if state.complete(bundle) and all(
            self._horizon(name, memo) >= bundle.seq for name in state.stage.upstream
        ):
            self._start(state, bundle)

    def _horizon(self, name: str, memo: dict[str, float]) -> float:
        """A seq id below which stage `name` will never deliver a value again.

        A finished spout: infinity. A spout that feeds a sequential stage (its seq ids must
        increase): its last seq id. Any other spout: minus infinity (it may send any seq id).
        A worker: the least of its upstreams' horizons and the seq ids it holds."""
        if name in memo:
            return memo[name]
        if name in self._spout_last:
            found = _INF if name in self._spouts_done else self._spout_last[name]
        else:
            state = self._states[name]
            found = min(self._horizon(up, memo) for up in state.stage.upstream)
            held = state.held_seqs()
            if held:
                found = min(found, *held)
        memo[name] = found
        return found


class _Emitter:
    """A spout's `emit(seq, value)`: a coroutine function for an async spout; `blocking` is the
    plain function a sync spout gets (it runs in a thread)."""

    def __init__(self, run: TopologyRun, stage: Stage, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.stage = stage
        self.loop = loop
        self.last: int | None = None

    async def __call__(self, seq: int, value: Any) -> None:
        if self.run.stopped:
            raise asyncio.CancelledError("the topology's run has stopped")
        self._check(seq)
        self.last = seq
        await self.run.emitted(self.stage, seq, value)

    def blocking(self, seq: int, value: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(self(seq, value), self.loop)
        self.run._blocked_emits.add(future)
        try:
            future.result()
        finally:
            self.run._blocked_emits.discard(future)

    def printed(self, stream: str, text: str) -> None:
        """A line the spout printed (a debugger watches it); from any thread."""
        seq, item = self.last, Printed(stream, text)
        self.loop.call_soon_threadsafe(
            lambda: self.run._spawn(self.run._notify(self.stage.name, seq, item))
        )

    def _check(self, seq: int) -> None:
        name = self.stage.name
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError(f"spout {name!r}: a seq id is an int, not {type(seq).__name__}")
        ordered = name in self.run._ordered_spouts
        if ordered and self.last is not None and seq <= self.last:
            raise ValueError(
                f"spout {name!r} emitted seq id {seq} after {self.last}: a spout whose values "
                "reach a sequential worker must emit increasing seq ids"
            )


def _spouts_before_sequential(topology: Topology) -> set[str]:
    """The spouts whose values reach a sequential stage (their seq ids must increase)."""
    found: set[str] = set()
    for stage in topology.stages.values():
        if stage.sequential:
            ancestors = topology.ancestors(stage.name)
            found |= {name for name in ancestors if topology.stages[name].is_spout}
    return found


def _checked_debug(topology: Topology, debug: Mapping[str, Callback] | None) -> dict[str, Callback]:
    checked = dict(debug or {})
    for name, callback in checked.items():
        if name not in topology.stages:
            raise ValueError(
                f"grid.run(debug=...): topology {topology.name!r} has no stage {name!r} "
                f"(stages: {', '.join(topology.stages)})"
            )
        if not callable(callback):
            raise TypeError(f"grid.run(debug=...): the callback of {name!r} is not callable")
    return checked


def run(
    grid: Grid,
    topology: Topology,
    *,
    debug: Mapping[str, Callback] | None = None,
    stop_on_error: bool = False,
) -> AsyncIterator[tuple[int | None, Any]]:
    """See `Grid.run`."""
    if not isinstance(topology, Topology):
        raise TypeError(f"grid.run needs a girder.Topology, got {type(topology).__name__}")
    return TopologyRun(grid, topology, debug, stop_on_error).outputs()
