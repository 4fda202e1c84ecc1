"""A client process of the chaos test: runs a plan of nested jobs on the grid, logs every answer.

    python chaos_client.py PLAN.json ANSWERS.jsonl STOP_FILE

The grid comes from the environment (GIRDER_BACKEND, GIRDER_POOL, GIRDER_SECRET, ...). The plan is
`{"concurrency": K, "jobs": [{"id": ..., "fn": ..., "args": [...]}, ...]}`; the client runs the
jobs that ANSWERS.jsonl does not answer yet (an earlier incarnation may have been killed), K at a
time, in order, until STOP_FILE exists; then it finishes the jobs it started and exits. Each line
of ANSWERS.jsonl is one JSON event: `hello` (pid, node id), `submit`, `answer` (value) or `error`
(the exception), and `bye`; each is flushed at once so a kill -9 loses none.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import gridfns

import girder


class Answers:
    """The append-only event file of one client slot."""

    def __init__(self, path: Path) -> None:
        self.answered = {
            event["job"]
            for event in read_events(path)
            if event["event"] in ("answer", "error") and "job" in event
        }
        self._file: TextIO = path.open("a", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        record = {"event": event, "pid": os.getpid(), "t": time.monotonic(), **fields}
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of an answers file (a line cut short by a kill is skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


async def run_job(grid: girder.Grid, answers: Answers, job: dict[str, Any]) -> None:
    """Run one job and log its answer or its error."""
    answers.write("submit", job=job["id"])
    try:
        value = await grid.call(getattr(gridfns, job["fn"]), *job["args"])
    except Exception as exc:
        kind = getattr(exc, "kind", None)
        answers.write("error", job=job["id"], error=f"{type(exc).__name__}: {exc}", kind=kind)
    else:
        answers.write("answer", job=job["id"], value=value)


async def run_plan(plan: dict[str, Any], answers: Answers, stop_file: Path) -> None:
    """Run the unanswered jobs of `plan`, `concurrency` at a time, until `stop_file` appears."""
    todo = [job for job in plan["jobs"] if job["id"] not in answers.answered]
    running: set[asyncio.Task[None]] = set()
    async with girder.Grid.connect() as grid:
        answers.write("hello", node=grid.client.id)
        while not stop_requested(stop_file):
            while todo and len(running) < plan["concurrency"]:
                running.add(asyncio.create_task(run_job(grid, answers, todo.pop(0))))
            if not running:  # the plan is done: wait for the stop file
                await asyncio.sleep(0.1)
                continue
            done, running = await asyncio.wait(running, timeout=0.1)
            for task in done:
                task.result()
        if running:
            await asyncio.wait(running)
    answers.write("bye")


def stop_requested(stop_file: Path) -> bool:
    return stop_file.exists()


def main() -> int:
    plan_path, answers_path, stop_path = map(Path, sys.argv[1:4])
    plan = json.loads(plan_path.read_text())
    answers = Answers(answers_path)
    try:
        asyncio.run(run_plan(plan, answers, stop_path))
    finally:
        answers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
