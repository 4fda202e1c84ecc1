"""Grid functions for the benchmarks.

They live in an importable module (not `__main__`) so that they travel by reference, as real
grid functions do; a function defined in `__main__` travels by value, which is slower by design.
"""

from __future__ import annotations

import asyncio
import time

import girder


@girder.function
async def tree(depth: int, index: int) -> int:
    """A binary tree of distinct re-entrant requests: 2**(depth+1) - 1 requests in all."""
    if depth == 0:
        return 1
    left, right = await girder.call_reentrant(
        [(tree, depth - 1, 2 * index), (tree, depth - 1, 2 * index + 1)]
    )
    return int(left) + int(right) + 1


async def tree_tasks(depth: int, index: int) -> int:
    """The same tree with one asyncio task per call: the baseline."""
    if depth == 0:
        return 1
    left, right = await asyncio.gather(
        tree_tasks(depth - 1, 2 * index), tree_tasks(depth - 1, 2 * index + 1)
    )
    return left + right + 1


@girder.function
async def chain(n: int) -> int:
    """A chain of re-entrant requests n deep: chain(n) needs chain(n - 1), down to chain(0)."""
    if n == 0:
        return 0
    (below,) = await girder.call_reentrant([(chain, n - 1)])
    return int(below) + 1


@girder.function
def square(x: int) -> int:
    """A cheap leaf: what `grid.call` hits in the cache benchmark."""
    return x * x


@girder.function
async def reentrant_hits(x: int, calls: int) -> tuple[list[float], float]:
    """Call `square(x)` re-entrantly `calls` times once it is cached: the seconds of each
    call, and the CPU seconds of them all."""
    await girder.call_reentrant([(square, x)])  # computes it (this one parks)
    clock = time.perf_counter
    samples = []
    cpu_start = time.process_time()
    for _ in range(calls):
        start = clock()
        await girder.call_reentrant([(square, x)])
        samples.append(clock() - start)
    return samples, time.process_time() - cpu_start


@girder.function
def blob_result(size: int, tag: str) -> bytes:
    """`size` bytes that differ from run to run (by `tag`): a large value, never deduplicated."""
    head = tag.encode()
    return head + bytes(size - len(head))


@girder.function
async def io_wait(ms: int, index: int) -> int:
    """An I/O-bound request: it awaits `ms` milliseconds and computes nothing."""
    await asyncio.sleep(ms / 1000)
    return index


@girder.function
def busy(ms: int, index: int) -> int:
    """A CPU-bound sync request: it spins `ms` milliseconds in Python bytecode (holding the
    GIL as real Python code does) and returns `index`."""
    deadline = time.perf_counter() + ms / 1000
    while time.perf_counter() < deadline:
        pass
    return index


@girder.function
def blocking(ms: int, index: int) -> int:
    """A sync request that blocks `ms` milliseconds with the GIL released (as I/O or NumPy
    do) and returns `index`."""
    time.sleep(ms / 1000)
    return index
