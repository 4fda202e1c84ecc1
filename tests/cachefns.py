"""Grid functions of the cache tests (importable, as a worker process would import them)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import girder


def _mark(directory: str, name: str) -> None:
    Path(directory, f"{name}-{os.getpid()}-{time.monotonic_ns()}").touch()


@girder.function(ttl=1.0)
def short_lived(directory: str, n: int) -> int:
    """Cached for one second; marks `short-<n>-...` in `directory` each time it runs."""
    _mark(directory, f"short-{n}")
    return 2 * n


@girder.function
def long_lived(directory: str, n: int) -> int:
    """Cached with the grid's default ttl; marks `long-<n>-...` each time it runs."""
    _mark(directory, f"long-{n}")
    return 3 * n


def block_value(index: int, size: int) -> bytes:
    """The value `block` returns: its index repeated (so a mixed-up value shows)."""
    return index.to_bytes(4, "big") * (size // 4)


@girder.function
def block(index: int, size: int) -> bytes:
    return block_value(index, size)


@girder.function
async def blocks_digest(first: int, count: int, size: int) -> int:
    """Asks for `count` blocks and checks each one: the sum of their first words."""
    values = await girder.call_reentrant([(block, first + i, size) for i in range(count)])
    for offset, value in enumerate(values):
        if value != block_value(first + offset, size):
            raise AssertionError(f"block {first + offset} came back wrong")
    return sum(int.from_bytes(value[:4], "big") for value in values)
