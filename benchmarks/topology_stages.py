"""The pipeline of `benchmarks/topology.py` (spout -> worker -> sink), importable so that worker
processes find it (`girder worker --import benchmarks.topology_stages`). The spout runs in the
benchmark's own process: `VALUES` says how many values it sends."""

from __future__ import annotations

from typing import Any

import girder

VALUES = {"count": 1000}

pipeline = girder.Topology("pipeline")


@pipeline.spout
async def source(emit: Any) -> None:
    for seq in range(VALUES["count"]):
        await emit(seq, seq)


@pipeline.worker(upstream=[source])
async def double(seq: int, value: int, upstream: str) -> int:
    return 2 * value


@pipeline.worker(upstream=[double])
async def plus_one(seq: int, value: int, upstream: str) -> int:
    return value + 1
