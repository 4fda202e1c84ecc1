"""Grid functions the chunking tests run (importable, as a worker process would import them).

Each mapper leaves a mark file per run in the folder its source names, so that a test counts
the blocks really computed, in this process or in worker processes alike."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

import girder
from girder.sources import FileSource


def _mark(marks: str, lo: int, hi: int) -> None:
    (Path(marks) / f"map-{lo}-{hi}-{uuid.uuid4().hex[:8]}").touch()


def mapped(marks: Path) -> list[tuple[int, int]]:
    """The ranges the mappers computed, one entry per run."""
    ranges = []
    for path in marks.glob("map-*"):
        _, lo, hi, _ = path.name.split("-")
        ranges.append((int(lo), int(hi)))
    return sorted(ranges)


@girder.function
def pieces(source: tuple[str, str], lo: int, hi: int) -> list[list[int]]:
    """The range itself: reduced in order, the ranges of a request tile it exactly."""
    _mark(source[1], lo, hi)
    return [[lo, hi]]


@girder.function
def joined(partials: list[list[list[int]]]) -> list[list[int]]:
    """Ranges in order, adjacent ones merged (associative, not commutative)."""
    merged: list[list[int]] = []
    for part in partials:
        for lo, hi in part:
            if merged and merged[-1][1] == lo:
                merged[-1] = [merged[-1][0], hi]
            else:
                merged.append([lo, hi])
    return merged


@girder.function
def squares(source: tuple[str, str], lo: int, hi: int) -> int:
    _mark(source[1], lo, hi)
    return sum(i * i for i in range(lo, hi))


@girder.function
def total(partials: list[int]) -> int:
    return sum(partials)


@girder.function
def byte_counts(source: tuple[FileSource, str], lo: int, hi: int) -> Any:
    """The histogram of the bytes of a file's range `[lo, hi)`."""
    file, marks = source
    data = np.memmap(file.path, dtype=np.uint8, mode="r", offset=lo, shape=(hi - lo,))
    counts = np.bincount(data, minlength=256)
    file.check()
    _mark(marks, lo, hi)
    return counts


@girder.function
def summed(partials: list[Any]) -> Any:
    return np.sum(partials, axis=0)


@girder.function
async def squares_inside(marks: str, start: int, stop: int, blocks: tuple[int, ...]) -> int:
    """`girder.map_reduce` from inside a grid function (re-entrant)."""
    value: int = await girder.map_reduce(
        squares, total, ("inside", marks), start, stop, blocks=blocks
    )
    return value


@girder.function
async def answers_inside(marks: str, start: int, stop: int, blocks: tuple[int, ...]) -> list[Any]:
    """The answers of `girder.map_reduce_stream` inside a grid function, as tuples."""
    seen = []
    async for answer in girder.map_reduce_stream(
        squares, total, ("inside", marks), start, stop, blocks=blocks
    ):
        seen.append((answer.value, answer.covered, answer.total))
    return seen
