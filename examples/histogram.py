"""The histogram of a byte range of a large file, with cache support (seed 004's case).

Writes a file of random bytes (256 MiB unless `--mib` says otherwise) in a temporary folder,
then asks a grid for the histogram of a byte range (cold), and then of an overlapping range.
`girder.map_reduce` cuts each range into blocks aligned on 16 MiB, 1 MiB and 64 KiB; each block
is a cached request, so the second request computes only what the first did not cover.

For each request it prints how many blocks the grid computed (the requests its workers ran, less
the one of the whole range: mappers of the finest blocks and reductions of the bigger ones) and
how many it reused (the block requests its nodes found in the cache).

Run: python examples/histogram.py [--mib 256]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import girder

MIB = 1 << 20


@girder.function
def byte_counts(source: girder.FileSource, lo: int, hi: int) -> Any:
    """How many times each byte value occurs in `[lo, hi)` of the file."""
    data = np.memmap(source.path, dtype=np.uint8, mode="r", offset=lo, shape=(hi - lo,))
    counts = np.bincount(data, minlength=256)
    source.check()  # the file did not change while we read it
    return counts


@girder.function
def add_counts(partials: list[Any]) -> Any:
    return np.sum(partials, axis=0)


def write_file(path: Path, size: int) -> None:
    rng = np.random.default_rng(2004)
    with path.open("wb") as file:
        for at in range(0, size, 16 * MIB):
            n = min(16 * MIB, size - at)
            # The smaller of two random bytes: a histogram that falls from 0 to 255.
            low = np.minimum(
                rng.integers(0, 256, n, dtype=np.uint8), rng.integers(0, 256, n, dtype=np.uint8)
            )
            file.write(low.tobytes())


def direct_counts(path: Path, lo: int, hi: int) -> Any:
    """The same histogram with numpy alone (16 MiB at a time, to bound memory)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return sum(
        np.bincount(data[at : min(at + 16 * MIB, hi)], minlength=256)
        for at in range(lo, hi, 16 * MIB)
    )


def counters(grid: girder.Grid) -> tuple[int, int]:
    """How many requests the grid's workers ran, and how many its nodes found in the cache."""
    ran = sum(worker.stats.ran for worker in grid.workers)
    hits = grid.client.stats.cache_hits + sum(worker.stats.cache_hits for worker in grid.workers)
    return ran, hits


async def histogram(grid: girder.Grid, path: Path, lo: int, hi: int, label: str) -> None:
    source = girder.file_source(path)
    ran, hits = counters(grid)
    start = time.perf_counter()
    counts = await grid.map_reduce(byte_counts, add_counts, source, lo, hi)
    seconds = time.perf_counter() - start
    ran_now, hits_now = counters(grid)
    print(
        f"{label:<12} bytes [{lo:,}, {hi:,}) in {seconds:.2f} s: "
        f"{ran_now - ran - 1} blocks computed, {hits_now - hits} reused from the cache"
    )
    assert np.array_equal(counts, direct_counts(path, lo, hi))
    print(f"{'':<12} most common byte: {int(np.argmax(counts))}, {int(counts.max()):,} times")


async def main(mib: int) -> None:
    size = mib * MIB
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.bin"
        write_file(path, size)
        async with girder.Grid.local(workers=2) as grid:
            await histogram(grid, path, 1234, size * 3 // 4 + 77, "cold")
            await histogram(grid, path, size // 4 + 99, size - 4321, "overlapping")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the file in MiB")
    asyncio.run(main(parser.parse_args().mib))
