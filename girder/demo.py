"""`girder demo`: the seeds' recursive "bogosity" job on an embedded grid.

Each top-level job asks for `fanout` sub-jobs one level down, and so on to level 0; sub-jobs do
not depend on the top-level job number, so different jobs share them (in flight or from the
cache). Every result names the node that computed it, so the output shows re-entrancy and work
sharing happen; the table after it counts, per node, what it ran, its cache hits, and what the
distributor handed to it or stole from it. The summary says how many requests were asked for
(top-level jobs and every sub-request), how many ran, how many were answered from the cache, and
how many were shared while in flight (asked for while another run of theirs was under way or
queued, so they waited for that run instead of running again).

The demo's `asyncio.sleep` stands in for computation, so its grid lends no baton to it
(`io_concurrency=0`): each worker runs one bogosity at a time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import girder
from girder.errors import GirderError
from girder.grid import Grid

_asked: Counter[str] = Counter()
"""Sub-requests asked for by the bogosity runs of each demo (by its tag)."""


@girder.function
async def bogosity(msec: int, job: int, level: int, fanout: int, tag: str) -> str:
    """Ask for `fanout` sub-jobs a level down, then "work" for `msec` milliseconds."""
    requests = [(bogosity, msec, j, level - 1, fanout, tag) for j in range(fanout)] if level else []
    _asked[tag] += len(requests)
    below = await girder.call_reentrant(requests)
    await asyncio.sleep(msec / 1000)  # stands in for computation (the grid lends no baton)
    return f"Bogosity:{girder.current_node()}:{job}:{level}:[{','.join(below)}]"


@dataclass(frozen=True)
class DemoReport:
    """What the demo did, for printing (and for tests)."""

    results: list[str]
    seconds: float
    repeat_seconds: float
    rows: list[tuple[str, int, int, int, int]]  # node, ran, cache hits, handed to, stolen from
    asked: int = 0
    """Requests asked for in the first round: the jobs and every sub-request."""
    cache_hits: int = 0
    """Of those, answered from the cache (in the first round)."""

    @property
    def ran(self) -> int:
        return sum(row[1] for row in self.rows)

    @property
    def shared(self) -> int:
        """Asked for while a run of theirs was under way or queued: they waited for it."""
        return self.asked - self.ran - self.cache_hits


async def run_demo(
    workers: int = 4, jobs: int = 10, level: int = 3, fanout: int = 3, msec: int = 2
) -> DemoReport:
    """Run the bogosity jobs on `Grid.local(workers)` and collect per-node counts."""
    tag = uuid.uuid4().hex[:8]  # a fresh tag per run, so nothing comes from an earlier cache
    # A short stealing period, so that stealing shows within a demo that lasts milliseconds.
    async with Grid.local(workers=workers, steal_period=0.002, io_concurrency=0) as grid:
        start = time.perf_counter()
        results = await grid.call_all(
            [(bogosity, msec, job, level, fanout, tag) for job in range(jobs)]
        )
        seconds = time.perf_counter() - start
        asked = jobs + _asked.pop(tag, 0)
        hits = sum(node.stats.cache_hits for node in [*grid.workers, grid.client])
        start = time.perf_counter()
        again = await grid.call_all(
            [(bogosity, msec, job, level, fanout, tag) for job in range(jobs)]
        )
        repeat_seconds = time.perf_counter() - start
        if again != results:  # every one from the cache this time
            raise GirderError("the demo's repeated jobs gave other results than the first run")
        assert grid.distributor is not None
        handed, stolen = grid.distributor.handed_to, grid.distributor.stolen_from
        rows = [
            (w.id, w.stats.ran, w.stats.cache_hits, handed[w.id], stolen[w.id])
            for w in grid.workers
        ]
        rows.append(("client", 0, grid.client.stats.cache_hits, 0, 0))
    return DemoReport(list(results), seconds, repeat_seconds, rows, asked, hits)


def format_report(report: DemoReport, width: int = 110) -> str:
    """The demo's printout: shortened results, then the per-node table."""
    lines = ["Results (each names the node that computed it):"]
    for result in report.results:
        lines.append("  " + (result if len(result) <= width else result[: width - 3] + "..."))
    lines.append("")
    lines.append(f"{'node':<12}{'ran':>8}{'cache hits':>12}{'handed to':>11}{'stolen from':>13}")
    for node, ran, hits, handed, stolen in report.rows:
        lines.append(f"{node:<12}{ran:>8}{hits:>12}{handed:>11}{stolen:>13}")
    lines.append(
        f"{len(report.results)} jobs asked for {report.asked} requests (sub-requests included): "
        f"{report.ran} ran, {report.shared} were shared while in flight, "
        f"{report.cache_hits} came from the cache; in {report.seconds:.3f} s."
    )
    lines.append(f"Again, the same {len(report.results)} jobs:")
    lines.append(f"all came from the cache in {report.repeat_seconds:.4f} s.")
    return "\n".join(lines)
