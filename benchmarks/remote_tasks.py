"""Grid functions for `benchmarks/distributed.py`; the worker processes load them with
`girder worker --import benchmarks.remote_tasks`.

Every function takes a `tag` so that each measured run uses keys that nothing has cached yet.
"""

from __future__ import annotations

import asyncio
import os
import time

import girder


@girder.function
def echo(tag: str, index: int) -> int:
    """The trivial remote call of W1 and W2 (a sync function: it runs in the worker loop)."""
    return index


@girder.function
async def tree(depth: int, index: int, tag: str) -> int:
    """A binary tree of distinct re-entrant requests: 2**(depth+1) - 1 requests in all (W3)."""
    if depth == 0:
        return 1
    left, right = await girder.call_reentrant(
        [(tree, depth - 1, 2 * index, tag), (tree, depth - 1, 2 * index + 1, tag)]
    )
    return int(left) + int(right) + 1


@girder.function
async def chain(n: int, tag: str) -> int:
    """A chain of re-entrant requests n deep: chain(n) needs chain(n - 1), down to chain(0)
    (W4): n + 1 requests, strictly one after the other."""
    if n == 0:
        return 0
    (below,) = await girder.call_reentrant([(chain, n - 1, tag)])
    return int(below) + 1


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


@girder.function
async def sleepy(depth: int, fanout: int, index: int, tag: str, folder: str) -> int:
    """A tree whose `fanout ** depth` leaves sleep ten minutes (`benchmarks/cancel.py`). Every
    coroutine writes `<folder>/stop-<depth>-<index>` holding `time.time()` when it stops, and
    leaves write `start-<index>` when they start."""
    try:
        if depth == 0:
            _write(os.path.join(folder, f"start-{index}"), "")
            await asyncio.sleep(600)
            return 1
        children = [
            (sleepy, depth - 1, fanout, index * fanout + i, tag, folder) for i in range(fanout)
        ]
        return sum(await girder.call_reentrant(children))
    finally:
        _write(os.path.join(folder, f"stop-{depth}-{index}"), repr(time.time()))
