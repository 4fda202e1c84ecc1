"""The worker's side of a topology: one stage invocation is one ordinary grid request.

`grid.run` submits a request of `run_stage` (or `run_stage_debugged`, for the stages a debugger
watches) for each value or bundle a stage must handle, so stage invocations are claimed, leased,
recovered after a crash and spread over the grid like any request. The argument names the
topology by its module and name; the worker finds it among the topologies it has loaded, or
imports its module if the worker may (`--import`, `GIRDER_ALLOWED_MODULES`).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from girder.functions import function
from girder.scheduler.context import current_evaluation
from girder.security import may_import
from girder.topology.capture import captured
from girder.topology.model import Stage, find_topology


@dataclass(frozen=True, slots=True)
class Printed:
    """A line a watched stage printed: `stream` is "stdout" or "stderr"."""

    stream: str
    text: str


@dataclass(frozen=True, slots=True)
class Output:
    """The value a watched stage returned (the last answer of its debugged request)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Invocation:
    """One call of one stage: its inputs, and where to find the stage.

    Its key is the run id and the invocation's number in that run, never its inputs (which may
    be large): each invocation is a request of its own, run at most once at a time."""

    module: str
    topology: str
    stage: str
    run: str
    number: int
    seq: int
    inputs: Any
    """The value (a worker without `bundle`) or {upstream name: value} (a bundled one)."""
    upstream: str | None

    @property
    def __girder_identity__(self) -> bytes:
        return f"{self.run}:{self.number}".encode()

    def __repr__(self) -> str:
        return f"{self.topology}.{self.stage}[seq={self.seq}]"


def locate(call: Invocation) -> Stage:
    """The stage `call` names; `LookupError` saying how to make it known here."""
    topology = find_topology(call.module, call.topology)
    if topology is None and _may_import(call.module):
        importlib.import_module(call.module)
        topology = find_topology(call.module, call.topology)
    if topology is None:
        raise LookupError(
            f"topology {call.topology!r} of module {call.module} is not loaded on this worker: "
            f"start it with --import {call.module} (define the topology at module level)"
        )
    stage = topology.stages.get(call.stage)
    if stage is None or stage.is_spout:
        raise LookupError(f"topology {call.topology!r} has no worker stage {call.stage!r} here")
    return stage


def _may_import(module: str) -> bool:
    evaluation = current_evaluation.get()
    settings = getattr(evaluation.host, "settings", None) if evaluation else None
    return settings is not None and may_import(module, settings)


async def invoke(stage: Stage, call: Invocation) -> Any:
    """Call the stage's function as its kind says; a sync one in a thread (the worker's loop
    keeps its heartbeats)."""
    kwargs = {} if stage.bundle else {"upstream": call.upstream}
    if stage.is_async:
        return await stage.fn(call.seq, call.inputs, **kwargs)
    return await asyncio.to_thread(stage.fn, call.seq, call.inputs, **kwargs)


@function(cache=False, name="girder.topology.stage")
async def run_stage(call: Invocation) -> Any:
    """One stage invocation; its value goes downstream."""
    return await invoke(locate(call), call)


@function(cache=False, name="girder.topology.stage_debugged")
async def run_stage_debugged(call: Invocation) -> AsyncIterator[Printed | Output]:
    """One stage invocation whose printed lines are answers as they come, then its `Output`."""
    stage = locate(call)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[Printed | None] = asyncio.Queue()

    def sink(stream: str, text: str) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, Printed(stream, text))

    async def body() -> Any:
        try:
            with captured(sink):
                return await invoke(stage, call)
        finally:
            loop.call_soon_threadsafe(lines.put_nowait, None)

    task = asyncio.ensure_future(body())
    try:
        while (line := await lines.get()) is not None:
            yield line
        yield Output(await task)
    finally:
        task.cancel()
