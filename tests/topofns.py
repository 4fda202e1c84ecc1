"""Topologies for tests/test_topology.py, importable by worker processes (`--import topofns`).

Spouts run in the test's own process, so they read `PLAN` (set by the test); worker stages may
run in other processes, so everything they need travels in the values (a marks folder, delays).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import girder

PLAN: dict[str, Any] = {}
"""What the spouts emit in the current test: set by the test before `grid.run`."""


def note(directory: str, name: str, line: str) -> None:
    """Append one line to `directory/name` (one write: lines of several processes never mix)."""
    with open(Path(directory) / name, "a") as file:
        file.write(line + "\n")


def lines(directory: Path, name: str) -> list[str]:
    path = directory / name
    return path.read_text().splitlines() if path.exists() else []


# -- the seed's A, B -> C, bundled -----------------------------------------------------------------

abc = girder.Topology("abc")


@abc.spout
async def camera_a(emit: Any) -> None:
    for seq in PLAN["a"]:
        await emit(seq, {"who": "a", "seq": seq, "marks": PLAN["marks"]})


@abc.spout
def camera_b(emit: Any) -> None:  # a sync spout: emit blocks until there is room
    for seq in PLAN["b"]:
        PLAN.setdefault("b_emitted", []).append(seq)
        emit(seq, {"who": "b", "seq": seq})


@abc.worker(upstream=[camera_a, camera_b], bundle=True)
async def stitch(seq: int, inputs: dict[str, Any]) -> dict[str, Any]:
    note(inputs["camera_a"]["marks"], "stitch", f"{seq} {os.getpid()}")
    return {"seq": seq, "parts": sorted(inputs), "from": [v["seq"] for v in inputs.values()]}


# -- sequential bundles that complete out of order -------------------------------------------------

ordered = girder.Topology("ordered")


@ordered.spout
async def ticks(emit: Any) -> None:
    for seq in PLAN["seqs"]:
        await emit(seq, {"seq": seq, "marks": PLAN["marks"]})


@ordered.worker(upstream=[ticks])
async def develop(seq: int, value: dict[str, Any], upstream: str) -> dict[str, Any]:
    await asyncio.sleep(0.3 if seq % 2 == 0 else 0.01)  # odd seq ids finish first
    note(value["marks"], "developed", str(seq))
    return value


@ordered.worker(upstream=[ticks, develop], bundle=True, sequential=True)
def in_order(seq: int, inputs: dict[str, Any]) -> int:
    marks = inputs["ticks"]["marks"]
    note(marks, "in_order", f"start {seq}")
    time.sleep(0.02)  # a sync stage: another bundle would have time to start meanwhile
    note(marks, "in_order", f"end {seq}")
    return seq


# -- a worker without bundle sees every value ------------------------------------------------------

merge = girder.Topology("merge")


@merge.spout
async def left(emit: Any) -> None:
    for seq in PLAN["seqs"]:
        await emit(seq, ("left", seq, PLAN["marks"]))


@merge.spout
async def right(emit: Any) -> None:
    for seq in PLAN["seqs"]:
        await emit(seq, ("right", seq, PLAN["marks"]))


@merge.worker(upstream=[left, right])
def each(seq: int, value: tuple[str, int, str], upstream: str) -> tuple[str, str, int]:
    note(value[2], "each", f"{upstream} {seq}")
    return (upstream, value[0], seq)


# -- back-pressure: a fast spout and a slow worker -------------------------------------------------

pressure = girder.Topology("pressure")


@pressure.spout
async def fast(emit: Any) -> None:
    for seq in range(PLAN["count"]):
        await emit(seq, seq)
        PLAN["emitted"] += 1
        PLAN["gaps"].append(PLAN["emitted"] - PLAN["received"])


@pressure.worker(upstream=[fast], max_pending=4)
async def slow(seq: int, value: int, upstream: str) -> int:
    await asyncio.sleep(0.01)
    return value * 2


# -- failures --------------------------------------------------------------------------------------

failing = girder.Topology("failing")


@failing.spout
async def numbers(emit: Any) -> None:
    for seq in range(6):
        await emit(seq, seq)


@failing.worker(upstream=[numbers])
def picky(seq: int, value: int, upstream: str) -> int | None:
    if value == 3:
        raise ValueError("three is not allowed")
    return None if value == 4 else value


@failing.worker(upstream=[picky], bundle=True, sequential=True)
def after_picky(seq: int, inputs: dict[str, int]) -> int:
    return inputs["picky"] * 10


# -- a crash mid-bundle ----------------------------------------------------------------------------

crash = girder.Topology("crash")


@crash.spout
async def crash_a(emit: Any) -> None:
    for seq in range(PLAN["count"]):
        await emit(seq, PLAN["marks"])


@crash.spout
async def crash_b(emit: Any) -> None:
    for seq in range(PLAN["count"]):
        await emit(seq, seq)


@crash.worker(upstream=[crash_a, crash_b], bundle=True)
async def fragile(seq: int, inputs: dict[str, Any]) -> int:
    marks = inputs["crash_a"]
    note(marks, "fragile", f"{seq} {os.getpid()}")
    if seq == PLAN.get("stuck", 3):
        while not (Path(marks) / "go").exists():  # noqa: ASYNC110 - another process makes it
            await asyncio.sleep(0.05)
    return int(inputs["crash_b"]) * 100


# -- what stages print -----------------------------------------------------------------------------

chatty = girder.Topology("chatty")


@chatty.spout
async def words(emit: Any) -> None:
    for seq in range(PLAN["count"]):
        await emit(seq, f"w{seq}")


@chatty.worker(upstream=[words])
def noisy(seq: int, value: str, upstream: str) -> str:
    # Not watched: goes to the worker's own stdout. One write per line, since sync workers run
    # in threads and print() writes the text and its newline separately, so two lines can mix.
    sys.stdout.write(f"noise {seq}\n")
    return value


@chatty.worker(upstream=[noisy], bundle=True)
async def talker(seq: int, inputs: dict[str, str]) -> str:
    print(f"hello {seq} from {os.getpid()}")
    print(f"careful {seq}", file=sys.stderr)
    await asyncio.sleep(0)
    return inputs["noisy"].upper()


# -- a spout that never ends ----------------------------------------------------------------------

endless = girder.Topology("endless")


@endless.spout
def forever(emit: Any) -> None:  # sync: it runs in a thread, which must end with the run
    seq = 0
    while True:
        emit(seq, seq)
        seq += 1


@endless.worker(upstream=[forever], max_pending=2)
def copy(seq: int, value: int, upstream: str) -> int:
    return value
