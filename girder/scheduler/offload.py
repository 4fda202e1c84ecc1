"""Where a sync grid function runs: on the event loop while it is quick, in a thread once slow.

A sync function that runs on the event loop holds it: in `Grid.local` the host application's
loop stalls for as long as the function runs. Running every call in a thread would cost each
quick function (most leaves: microseconds) a hand-off of tens of microseconds. So girder learns,
per function and per process, how long its runs take: a function not yet measured, or whose
recent runs took `INLINE_LIMIT` or more, runs in the worker's thread; one measured quick runs
inline. The estimate rises at once with a slow run and decays over quick ones, so a function
that is sometimes slow goes to the thread from its first slow run on.

A thread still shares the GIL: a loop that waits for it waits a switch interval
(`sys.getswitchinterval()`, 5 ms by default) while one thread runs Python bytecode, but several
intervals, in no fair order, while several do. So the threads of sync functions run them one at
a time per process. That costs no throughput against running them on the loop as before (one at
a time too); sync functions that should overlap (blocking I/O) are better written `async def`,
and CPU-bound ones that should use several cores want `Grid.local(processes=N)`.

With `sync_offload="process"`, slow and unmeasured functions run in child processes instead
(`girder.scheduler.children`): they hold none of this process's GIL, so pure-Python work no
longer keeps the loop waiting, and several run at once (one per baton, on all CPUs but one).
Quick ones still run inline, learned from the durations the children measure. A run in a child
can be stopped (`SyncRunner.stop`, when its job is cancelled): its child is killed. One in a
thread cannot.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from girder.functions import GridFunction
from girder.scheduler.children import ChildCall, ChildPool
from girder.scheduler.context import Evaluation

INLINE_LIMIT = 0.001
"""Seconds: a sync function whose runs take less runs on the event loop."""

_DECAY = 0.7
"""How much of its estimate a function keeps after a run quicker than the estimate."""

_estimates: dict[str, float] = {}
"""Recent duration of each sync grid function (by name) run in this process."""

_one_at_a_time = threading.Lock()
"""Held by the thread that runs a sync function (one per process at a time)."""


def runs_inline(name: str) -> bool:
    """Whether the function `name` is known to be quick enough for the event loop."""
    estimate = _estimates.get(name)
    return estimate is not None and estimate < INLINE_LIMIT


def learn(name: str, seconds: float) -> None:
    """Count a run of `seconds`: a slower run sets the estimate, a quicker one lowers it."""
    estimate = _estimates.get(name)
    if estimate is None or seconds >= estimate:
        _estimates[name] = seconds
    else:
        _estimates[name] = _DECAY * estimate + (1 - _DECAY) * seconds


class SyncRunner:
    """Runs one worker's sync functions, inline or off the loop, and times each run: in the
    worker's own thread (made on first use), or in `children` when given."""

    def __init__(self, node: str, children: ChildPool | None = None) -> None:
        self._node = node
        self._children = children
        self._executor: ThreadPoolExecutor | None = None
        self._in_children: dict[str, asyncio.Task[Ran]] = {}
        """The runs under way in `children`, by key (`stop` cancels one)."""

    async def run(self, function: GridFunction[..., Any], evaluation: Evaluation) -> Ran:
        """Run the sync grid function `function` for `evaluation`. In the thread it sees this
        task's context variables (the current evaluation)."""
        call = functools.partial(function.run_sync, evaluation.args, evaluation.kwargs)
        if runs_inline(function.name):
            return _timed(function.name, call)
        if self._children is not None:
            run = _in_child(self._children, self._node, function, evaluation)
            return await self._stoppable(evaluation.key, run)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"girder-{self._node}")
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, context.run, _threaded, function.name, call
        )

    def stop(self, key: str) -> None:
        """Stop the run of `key` if it is under way in a child: the child is killed (its job
        was cancelled: nobody wants the value) and `run` returns a `Ran` marked `stopped`. A
        run in the thread goes on: nothing can interrupt it."""
        run = self._in_children.get(key)
        if run is not None:
            run.cancel()

    async def _stoppable(self, key: str, run: Coroutine[Any, Any, Ran]) -> Ran:
        """Await `run` in a task of its own, so that `stop` cancels it and not the caller (the
        worker's loop); a caller cancelled (the worker stops) cancels it too."""
        task = asyncio.get_running_loop().create_task(run)
        self._in_children[key] = task
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait([task])  # its child killed and waited for
            raise
        finally:
            del self._in_children[key]
        if task.cancelled():
            return Ran(None, None, 0.0, stopped=True)
        return task.result()

    def close(self) -> None:
        """Let the thread end once it has finished what it runs (a stopping grid does not wait
        for a sync function: nothing can interrupt it in a thread; `children` are the grid's
        to close)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


@dataclass(slots=True)
class Ran:
    """How a sync function's run went: its value or its exception, and how long it ran (not
    counting the wait for its turn in a thread); or that it was stopped (`SyncRunner.stop`)
    and has neither."""

    value: Any
    error: Exception | None
    seconds: float
    stopped: bool = False


async def _in_child(
    children: ChildPool, node: str, function: GridFunction[..., Any], evaluation: Evaluation
) -> Ran:
    """Run the function in one of `children`; learn how long it ran there."""
    value, error, seconds = await children.run(
        ChildCall(
            function.ref,
            evaluation.args,
            evaluation.kwargs,
            node,
            evaluation.key,
            evaluation.job,
            function.timeout,
        )
    )
    if error is None or error.kind == "error":  # it ran: its duration counts
        learn(function.name, seconds)
    return Ran(value, error, seconds)


def _timed(name: str, call: Callable[[], Any]) -> Ran:
    start = time.perf_counter()
    try:
        ran = Ran(call(), None, 0.0)
    except Exception as exc:
        ran = Ran(None, exc, 0.0)
    ran.seconds = time.perf_counter() - start
    learn(name, ran.seconds)
    return ran


def _threaded(name: str, call: Callable[[], Any]) -> Ran:
    """Run `call` in this thread, alone among the threads of sync functions."""
    with _one_at_a_time:
        return _timed(name, call)
