"""Cache-aware chunking: the block decomposition's properties (hypothesis), and `map_reduce` on
the embedded grid and on Redis with worker processes: exact values, blocks reused by an
overlapping request (counted by the mappers' marks), a changed file reusing none, re-entrant
use, and a coarse answer from the cached blocks before the exact one."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chunkfns import (
    answers_inside,
    byte_counts,
    joined,
    mapped,
    pieces,
    squares,
    squares_inside,
    summed,
    total,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from processes import GridProcesses, grid_on

import girder
from girder.backends.base import RequestState
from girder.chunking import Block, Chunked, children, decompose, split

pytestmark = pytest.mark.timeout(120)

BLOCKS = (256, 32, 8)


# -- the decomposition ----------------------------------------------------------------------------


@st.composite
def block_sizes(draw: st.DrawFn) -> tuple[int, ...]:
    """1 to 3 sizes, largest first, each a multiple of the next."""
    finest = draw(st.sampled_from([1, 2, 3, 5, 8]))
    sizes = [finest]
    for _ in range(draw(st.integers(0, 2))):
        sizes.append(sizes[-1] * draw(st.sampled_from([2, 3, 4, 16])))
    return tuple(reversed(sizes))


ranges = st.tuples(st.integers(0, 3000), st.integers(1, 3000)).map(
    lambda pair: (pair[0], pair[0] + pair[1])
)


def _tree(plan: list[Block], sizes: tuple[int, ...]) -> set[Block]:
    """Every block a range's requests compute: its blocks and, down to the finest size, their
    children."""
    found: set[Block] = set()
    frontier = list(plan)
    while frontier:
        found.update(frontier)
        frontier = [child for block in frontier for child in children(block, sizes)]
    return found


def _aligned_inside(lo: int, hi: int, sizes: tuple[int, ...]) -> Iterator[Block]:
    for level, size in enumerate(sizes):
        for at in range(-(-lo // size) * size, hi - size + 1, size):
            yield Block(at, at + size, level)


@settings(max_examples=300, deadline=None)
@given(block_sizes(), ranges)
def test_blocks_cover_the_range_exactly_in_order_and_are_aligned(
    sizes: tuple[int, ...], bounds: tuple[int, int]
) -> None:
    start, stop = bounds
    plan = decompose(start, stop, sizes)
    assert plan[0].lo == start
    assert plan[-1].hi == stop
    for before, after in itertools.pairwise(plan):
        assert before.hi == after.lo  # no gap, no overlap
    for block in plan:
        assert block.lo < block.hi
        if block.level is None:  # an exact piece: less than one finest block, at an edge
            assert block.size < sizes[-1]
            assert block in (plan[0], plan[-1])
        else:
            assert block.size == sizes[block.level]
            assert block.lo % sizes[block.level] == 0


@settings(max_examples=300, deadline=None)
@given(block_sizes(), ranges)
def test_blocks_are_the_fewest_no_bigger_aligned_block_fits(
    sizes: tuple[int, ...], bounds: tuple[int, int]
) -> None:
    """Maximal blocks: the aligned block of the next bigger size around each block never lies
    inside the range (else that one block would replace several)."""
    start, stop = bounds
    for block in decompose(start, stop, sizes):
        bigger = [sizes[-1]] if block.level is None else list(sizes[: block.level])
        for size in bigger:
            lo = block.lo // size * size
            assert not (start <= lo and lo + size <= stop), (block, size)


@settings(max_examples=300, deadline=None)
@given(block_sizes(), ranges, ranges)
def test_overlapping_ranges_share_every_whole_block_of_their_intersection_at_every_level(
    sizes: tuple[int, ...], first: tuple[int, int], second: tuple[int, int]
) -> None:
    lo, hi = max(first[0], second[0]), min(first[1], second[1])
    one = _tree(decompose(*first, sizes), sizes)
    two = _tree(decompose(*second, sizes), sizes)
    for block in _aligned_inside(lo, hi, sizes):
        assert block in one
        assert block in two
    if lo < hi:  # the intersection's own blocks are among both ranges' too
        for block in decompose(lo, hi, sizes):
            if block.level is not None:
                assert block in one
                assert block in two


@settings(max_examples=200, deadline=None)
@given(block_sizes(), ranges, st.integers(1, 40))
def test_splitting_for_workers_keeps_the_cover_and_the_alignment(
    sizes: tuple[int, ...], bounds: tuple[int, int], workers: int
) -> None:
    plan = decompose(*bounds, sizes)
    parts = split(plan, sizes, workers)
    assert [b.lo for b in parts[1:]] == [b.hi for b in parts[:-1]]
    assert (parts[0].lo, parts[-1].hi) == bounds
    assert all(b.level is None or b.lo % sizes[b.level] == 0 for b in parts)
    assert _tree(parts, sizes) <= _tree(plan, sizes)  # only blocks the range computes anyway
    assert len(parts) >= workers or all(not children(b, sizes) for b in parts)


def test_the_issue_example_of_three_sizes() -> None:
    mib = 1 << 20
    plan = decompose(5 * mib + 100, 40 * mib + 7, (16 * mib, mib, 64 * 1024))
    sizes = [(b.size, b.level) for b in plan]
    assert sizes[0] == (64 * 1024 - 100, None)  # the exact piece up to 5M+64K
    assert sum(b.level == 2 for b in plan) == 15  # 64K blocks from 5M+64K to 6M
    assert [b.lo for b in plan if b.level == 0] == [16 * mib]
    assert sum(b.level == 1 for b in plan) == 10 + 8  # 6M..16M, then 32M..40M
    assert plan[-1] == Block(40 * mib, 40 * mib + 7, None)


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ((), "at least one block size"),
        ((64, 48), "multiple of the next"),
        ((8, 16), "multiple of the next"),
        ((16, 0), "not a positive integer"),
        ((16.0,), "not a positive integer"),
    ],
)
def test_bad_block_sizes_are_refused_with_what_is_wrong(
    blocks: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decompose(0, 100, blocks)


@pytest.mark.parametrize(("start", "stop"), [(5, 5), (9, 3), (-1, 4)])
def test_an_empty_or_negative_range_is_refused(start: int, stop: int) -> None:
    with pytest.raises(ValueError, match="0 <= start < stop"):
        decompose(start, stop, BLOCKS)


# -- on a grid ------------------------------------------------------------------------------------


@pytest.fixture
async def grid(
    backend_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[girder.Grid, GridProcesses | None]]:
    """Two workers: in this process on memory, or worker processes on Redis (allowed to run
    the test mappers of `chunkfns`)."""
    monkeypatch.setenv("GIRDER_ALLOWED_MODULES", '["chunkfns"]')
    async with grid_on(backend_url, tmp_path / "logs", workers=2) as found:
        yield found


def _finest_inside(lo: int, hi: int) -> set[tuple[int, int]]:
    size = BLOCKS[-1]
    return {(at, at + size) for at in range(-(-lo // size) * size, hi - size + 1, size)}


async def test_the_value_is_the_direct_computation_and_ranges_reduce_in_order(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    source = ("numbers", str(marks))
    assert await client.map_reduce(pieces, joined, source, 5, 1000, blocks=BLOCKS) == [[5, 1000]]
    value = await client.map_reduce(squares, total, source, 3, 777, blocks=BLOCKS)
    assert value == sum(i * i for i in range(3, 777))
    one_block = await client.map_reduce(squares, total, source, 1, 6, blocks=BLOCKS)
    assert one_block == sum(i * i for i in range(1, 6))


async def test_an_overlapping_request_reuses_every_block_it_shares(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    source = ("numbers", str(marks))
    await client.map_reduce(pieces, joined, source, 13, 700, blocks=BLOCKS)
    first = mapped(marks)
    assert len(first) == len(set(first))  # each block once
    assert await client.map_reduce(pieces, joined, source, 300, 1200, blocks=BLOCKS) == [
        [300, 1200]
    ]
    everything = mapped(marks)
    second = list(everything)
    for run in first:
        second.remove(run)
    assert len(everything) == len(set(everything))  # no block computed twice
    shared = _finest_inside(300, 700)
    assert shared <= set(first)
    assert not shared & set(second)  # every shared block came from the cache
    leaves = {
        (b.lo, b.hi) for b in _tree(decompose(300, 1200, BLOCKS), BLOCKS) if not children(b, BLOCKS)
    }
    assert set(second) == leaves - set(first)  # and nothing else
    assert (300, 304) in second  # the unaligned head is an exact piece of its own


async def test_a_request_inside_a_grid_function_is_reentrant_and_shares_the_cache(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    value = await client.call(squares_inside, str(marks), 10, 900, BLOCKS)
    assert value == sum(i * i for i in range(10, 900))
    computed = len(mapped(marks))
    assert computed
    again = await client.map_reduce(squares, total, ("inside", str(marks)), 10, 900, blocks=BLOCKS)
    assert again == value
    assert len(mapped(marks)) == computed  # the client's request was the same, cached


async def test_a_coarse_answer_from_the_cached_blocks_comes_before_the_exact_one(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    source = ("numbers", str(marks))

    async def answers(start: int, stop: int) -> list[Any]:
        return [
            answer
            async for answer in client.map_reduce_stream(
                squares, total, source, start, stop, blocks=BLOCKS
            )
        ]

    cold = await answers(0, 512)  # nothing cached: the exact answer alone
    assert [(a.covered, a.total, a.exact) for a in cold] == [(512, 512, True)]
    coarse, exact = await answers(256, 1024)
    assert (coarse.covered, coarse.total, coarse.exact) == (256, 768, False)
    assert coarse.value == sum(i * i for i in range(256, 512))  # the cached half alone
    assert exact.exact
    assert exact.value == sum(i * i for i in range(256, 1024))
    whole = await answers(40, 1000)  # all cached now: nothing coarse to say
    assert [a.exact for a in whole] == [True]
    assert whole[0].value == sum(i * i for i in range(40, 1000))


async def test_answers_inside_a_grid_function(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    await client.call(squares_inside, str(marks), 0, 64, BLOCKS)
    seen = await client.call(answers_inside, str(marks), 32, 128, BLOCKS)
    assert seen == [
        (sum(i * i for i in range(32, 64)), 32, 96),
        (sum(i * i for i in range(32, 128)), 96, 96),
    ]


def _write(path: Path, data: np.ndarray[Any, Any], mtime_ns: int | None = None) -> None:
    path.write_bytes(data.tobytes())
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


async def test_a_changed_file_never_reuses_a_block(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path, tmp_path: Path
) -> None:
    client, _ = grid
    path = tmp_path / "data.bin"
    rng = np.random.default_rng(7)
    old = rng.integers(0, 256, 4000, dtype=np.uint8)
    _write(path, old)
    before = girder.file_source(path)
    counts = await client.map_reduce(byte_counts, summed, (before, str(marks)), 100, 3000)
    assert np.array_equal(counts, np.bincount(old[100:3000], minlength=256))
    first = mapped(marks)

    new = old.copy()
    new[1000:1100] ^= 0xFF  # same size; a later write has a later time
    _write(path, new, mtime_ns=before.mtime_ns + 1_000_000_000 if before.mtime_ns else None)
    after = girder.file_source(path)
    assert after != before
    counts = await client.map_reduce(byte_counts, summed, (after, str(marks)), 100, 3000)
    assert np.array_equal(counts, np.bincount(new[100:3000], minlength=256))
    second = mapped(marks)
    for run in first:
        second.remove(run)
    assert sorted(second) == sorted(first)  # every block computed again, none reused

    # A block read under the old identity now fails instead of caching new data as old.
    with pytest.raises(girder.RequestError, match="changed since its identity was taken"):
        await client.map_reduce(byte_counts, summed, (before, str(marks)), 3000, 4000)


def test_a_digest_sees_a_change_that_keeps_the_size_and_the_time(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = np.arange(4000, dtype=np.uint32).astype(np.uint8)
    _write(path, data)
    by_time = girder.file_source(path)
    by_digest = girder.file_source(path, digest=True)
    assert by_digest.size == by_time.size == 4000
    changed = data.copy()
    changed[0] ^= 1
    _write(path, changed, mtime_ns=by_time.mtime_ns)  # a tool that restores the time
    assert girder.file_source(path) == by_time  # the limit the docs state
    assert girder.file_source(path, digest=True) != by_digest
    assert os.fspath(by_time) == str(path.resolve())


async def test_fewer_blocks_than_workers_are_split_into_their_children(
    tmp_path: Path, marks: Path
) -> None:
    """On one aligned block of the biggest size: with 2 live workers its 8 children run as
    blocks of their own (the big block is never a request); with `workers=1` it is one."""
    async with girder.Grid.local(workers=2) as grid:
        source = ("numbers", str(marks))
        chunked = Chunked(squares, total, source)
        big = chunked.request(Block(0, 256, 0), BLOCKS)
        child = chunked.request(Block(0, 32, 1), BLOCKS)
        assert await grid.map_reduce(squares, total, source, 0, 256, blocks=BLOCKS) == sum(
            i * i for i in range(256)
        )
        assert await grid.backend.state(big.key) == RequestState.UNKNOWN
        assert await grid.backend.state(child.key) == RequestState.DONE
        await grid.map_reduce(squares, total, source, 0, 256, blocks=BLOCKS, workers=1)
        assert await grid.backend.state(big.key) == RequestState.DONE


async def test_bad_arguments_fail_at_the_call_with_what_is_wrong() -> None:
    async with girder.Grid.local(workers=1) as grid:
        with pytest.raises(ValueError, match="multiple of the next"):
            await grid.map_reduce(squares, total, "s", 0, 10, blocks=(10, 4))
        with pytest.raises(ValueError, match="0 <= start < stop"):
            await grid.map_reduce(squares, total, "s", 10, 10)
        with pytest.raises(ValueError, match="workers"):
            await grid.map_reduce(squares, total, "s", 0, 10, workers=0)


async def test_outside_a_grid_everything_runs_here(marks: Path) -> None:
    value = await girder.map_reduce(squares, total, ("here", str(marks)), 3, 100, blocks=(16, 4))
    assert value == sum(i * i for i in range(3, 100))
    answers = [
        a async for a in girder.map_reduce_stream(squares, total, ("here", str(marks)), 3, 100)
    ]
    assert [(a.value, a.exact) for a in answers] == [(value, True)]


def test_the_histogram_example_reuses_blocks_on_its_second_request() -> None:
    example = Path(__file__).parent.parent / "examples" / "histogram.py"
    done = subprocess.run(
        [sys.executable, str(example), "--mib", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    counts = [
        (int(computed), int(reused))
        for computed, reused in re.findall(r"(\d+) blocks computed, (\d+) reused", done.stdout)
    ]
    (cold_computed, cold_reused), (warm_computed, warm_reused) = counts
    assert cold_computed > 0
    assert cold_reused == 0
    assert warm_reused > 0
    assert warm_computed < cold_computed
