"""Cache-aware chunking: `map_reduce` over a range cut into block-aligned pieces.

Requests over a large input are rarely identical, but cut into blocks aligned on fixed sizes
their pieces repeat. `decompose` covers `[start, stop)` with the fewest blocks aligned on
multiples of the configured sizes (largest first): big blocks in the middle, smaller ones toward
the edges, and the unaligned remainder as exact pieces. A block of the finest size, and an exact
piece, is one cached request `mapper(source, lo, hi)`; a bigger block is one cached request
that reduces its aligned children (the blocks of the next size inside it). So the blocks of a
range form a tree down to the finest size, every node of it is cached, and every aligned block
that lies inside a range is a node of that range's tree: a later request that overlaps reuses
every block it shares with an earlier one, at every level.

A whole range is one cached request too: `map_reduce` from a client or inside a grid function
is the value of `_span(...)`, which runs on a worker, splits blocks into their children while
there are fewer blocks than live workers in its pool, and reduces the blocks' values in order.
`map_reduce_stream` yields a coarse answer from the blocks already cached, then the exact one.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from girder.functions import GridFunction, Request, as_grid_function, function
from girder.scheduler.context import call_reentrant, peek, pool_size, stream

DEFAULT_BLOCKS = (1 << 24, 1 << 20, 1 << 16)
"""16 MiB blocks in the middle, 1 MiB and 64 KiB ones toward the edges."""


@dataclass(frozen=True, slots=True)
class Block:
    """`[lo, hi)`: an aligned block of `sizes[level]`, or an exact piece (`level` None)."""

    lo: int
    hi: int
    level: int | None

    @property
    def size(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer of `map_reduce_stream`: the reduction of the blocks that cover `covered` of
    the range's `total` units (all of them: the exact answer)."""

    value: Any
    covered: int
    total: int

    @property
    def exact(self) -> bool:
        return self.covered == self.total


def check_blocks(blocks: Sequence[int]) -> tuple[int, ...]:
    """The block sizes as a tuple, or `ValueError` saying what is wrong with them: positive
    integers, largest first, each a multiple of the next (so a block's children tile it)."""
    sizes = tuple(blocks)
    if not sizes:
        raise ValueError("map_reduce(blocks=...) needs at least one block size")
    for size in sizes:
        if type(size) is not int or size < 1:
            raise ValueError(f"map_reduce(blocks=...): {size!r} is not a positive integer")
    for bigger, smaller in itertools.pairwise(sizes):
        if bigger <= smaller or bigger % smaller:
            raise ValueError(
                f"map_reduce(blocks={sizes}): each size must be a multiple of the next, smaller "
                f"one ({bigger} is not a multiple of {smaller} bigger than it)"
            )
    return sizes


def _check_range(start: int, stop: int) -> None:
    if type(start) is not int or type(stop) is not int:
        raise TypeError(f"map_reduce needs integer bounds, got start={start!r}, stop={stop!r}")
    if not 0 <= start < stop:
        raise ValueError(f"map_reduce needs 0 <= start < stop, got [{start}, {stop})")


def decompose(start: int, stop: int, blocks: Sequence[int] = DEFAULT_BLOCKS) -> list[Block]:
    """The fewest blocks aligned on `blocks` (largest first) that cover `[start, stop)`, in
    order: at each size, the aligned blocks that fit; what is left at either edge goes to the
    next size; what the finest size leaves is at most one exact piece per edge, each inside one
    block of the finest size (a range that crosses a boundary of the finest size without
    holding a whole block is cut there, so that its pieces repeat in other requests)."""
    _check_range(start, stop)
    return _cover(start, stop, check_blocks(blocks), 0)


def _cover(lo: int, hi: int, sizes: tuple[int, ...], level: int) -> list[Block]:
    if lo >= hi:
        return []
    if level == len(sizes):
        return [Block(lo, hi, None)]
    size = sizes[level]
    first = -(-lo // size) * size
    last = hi // size * size
    if first > last:  # inside one block of this size
        return _cover(lo, hi, sizes, level + 1)
    middle = [Block(at, at + size, level) for at in range(first, last, size)]
    return [*_cover(lo, first, sizes, level + 1), *middle, *_cover(last, hi, sizes, level + 1)]


def children(block: Block, sizes: Sequence[int]) -> list[Block]:
    """The aligned blocks of the next size inside `block` (none for the finest size or an
    exact piece)."""
    if block.level is None or block.level + 1 >= len(sizes):
        return []
    step = sizes[block.level + 1]
    return [Block(at, at + step, block.level + 1) for at in range(block.lo, block.hi, step)]


def split(plan: list[Block], sizes: Sequence[int], at_least: int) -> list[Block]:
    """Replace the biggest blocks by their children until there are `at_least` blocks or none
    can be split: so that every worker has a block to compute."""
    plan = list(plan)
    while len(plan) < at_least:
        index = max(
            (i for i, block in enumerate(plan) if children(block, sizes)),
            key=lambda i: plan[i].size,
            default=None,
        )
        if index is None:
            break
        plan[index : index + 1] = children(plan[index], sizes)
    return plan


# -- blocks as grid requests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunked:
    """What a block's value depends on besides its range: the functions and the data."""

    mapper: GridFunction[..., Any]
    reducer: GridFunction[..., Any]
    source: Any

    async def reduce(self, partials: list[Any]) -> Any:
        value = self.reducer.fn(partials)
        return await value if inspect.isawaitable(value) else value

    def request(self, block: Block, sizes: tuple[int, ...]) -> Request:
        """The cached request of one block: `mapper(source, lo, hi)` for the finest size or an
        exact piece; else the reduction of its children, whose key names only the finer sizes
        (the same block has the same key whatever bigger sizes a request also uses)."""
        if block.level is None or block.level + 1 == len(sizes):
            return Request(self.mapper, self.source, block.lo, block.hi)
        return Request(_block, self, block.lo, block.hi, sizes[block.level + 1 :])

    async def values(self, plan: list[Block], sizes: tuple[int, ...]) -> list[Any]:
        return await call_reentrant([self.request(block, sizes) for block in plan])

    async def cached(self, plan: list[Block], sizes: tuple[int, ...]) -> list[tuple[Block, Any]]:
        """The biggest cached blocks inside `plan` and their values, in order: a block not
        cached is looked for in its children, one level (one batch of cache reads) at a time."""
        found: list[tuple[Block, Any]] = []
        frontier = plan
        while frontier:
            outcomes = await peek([self.request(block, sizes) for block in frontier])
            below: list[Block] = []
            for block, outcome in zip(frontier, outcomes, strict=True):
                if outcome is not None:
                    found.append((block, outcome.value))
                else:
                    below.extend(children(block, sizes))
            frontier = below
        found.sort(key=lambda pair: pair[0].lo)
        return found


@function
async def _block(chunked: Chunked, lo: int, hi: int, finer: tuple[int, ...]) -> Any:
    """A block that is not of the finest size: the reduction of its children of size
    `finer[0]` (each itself a block of the sizes `finer`)."""
    plan = [Block(at, at + finer[0], 0) for at in range(lo, hi, finer[0])]
    return await chunked.reduce(await chunked.values(plan, finer))


@function
async def _span(
    chunked: Chunked, start: int, stop: int, blocks: tuple[int, ...], workers: int | None
) -> Any:
    """`[start, stop)`: its blocks (split while fewer than the workers), reduced in order."""
    plan = decompose(start, stop, blocks)
    plan = split(plan, blocks, workers if workers is not None else await pool_size())
    return await chunked.reduce(await chunked.values(plan, blocks))


@function
async def _span_answers(
    chunked: Chunked, start: int, stop: int, blocks: tuple[int, ...], workers: int | None
) -> AsyncIterator[Answer]:
    """A coarse `Answer` from the blocks already cached (when they cover some of the range but
    not all of it), then the exact one, which is `_span`'s value (cached under its key too)."""
    total = stop - start
    cached = await chunked.cached(decompose(start, stop, blocks), blocks)
    covered = sum(block.size for block, _ in cached)
    if 0 < covered < total:
        coarse = await chunked.reduce([value for _, value in cached])
        yield Answer(coarse, covered, total)
    (exact,) = await call_reentrant([Request(_span, chunked, start, stop, blocks, workers)])
    yield Answer(exact, total, total)


# -- the public calls ------------------------------------------------------------------------------


def span_request(
    mapper: Any,
    reducer: Any,
    source: Any,
    start: int,
    stop: int,
    *,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    workers: int | None = None,
    answers: bool = False,
) -> Request:
    """The one request whose value is `map_reduce(...)` (with `answers`, whose answers are
    `map_reduce_stream(...)`'s). Checks its arguments at once."""
    _check_range(start, stop)
    sizes = check_blocks(blocks)
    if workers is not None and (type(workers) is not int or workers < 1):
        raise ValueError(f"map_reduce(workers=...) must be a positive integer, not {workers!r}")
    chunked = Chunked(as_grid_function(mapper), as_grid_function(reducer), source)
    return Request(_span_answers if answers else _span, chunked, start, stop, sizes, workers)


async def map_reduce(
    mapper: Any,
    reducer: Any,
    source: Any,
    start: int,
    stop: int,
    *,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    workers: int | None = None,
) -> Any:
    """`reducer([mapper(source, lo, hi) for each block])` over `[start, stop)`, computing only the
    blocks that are not cached yet. Inside a grid function (re-entrant: the caller parks while
    the blocks run); outside a grid, everything runs here, uncached. From a client, use
    `grid.map_reduce`.

    `mapper(source, lo, hi)` and `reducer(partials)` are grid functions (or plain functions,
    made grid functions with default options). The reducer gets a list of partial results in
    the order of their ranges, and must be associative: `reducer([reducer(a), reducer(b)])`
    equals `reducer(a + b)`. `source` identifies the data (see `girder.file_source`): it is
    part of every block's key. `blocks` are the block sizes, largest first, each a multiple of
    the next. `workers` is how many blocks at least to run at once (default: the live workers
    of the pool). See the chunking page of the docs.
    """
    request = span_request(mapper, reducer, source, start, stop, blocks=blocks, workers=workers)
    (value,) = await call_reentrant([request])
    return value


def map_reduce_stream(
    mapper: Any,
    reducer: Any,
    source: Any,
    start: int,
    stop: int,
    *,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    workers: int | None = None,
) -> AsyncIterator[Answer]:
    """The answers of `map_reduce(...)` as they come: `async for answer in
    girder.map_reduce_stream(...)`. First, when the blocks already cached cover part of the
    range, a coarse `Answer` reduced from them alone (`answer.exact` is False; `answer.covered`
    says how much of the range it covers); then the exact one. From a client, use
    `grid.map_reduce_stream`."""
    request = span_request(
        mapper, reducer, source, start, stop, blocks=blocks, workers=workers, answers=True
    )
    return stream(request.function, *request.args)
