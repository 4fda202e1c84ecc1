"""The mapper and reducer of `benchmarks/chunking.py`, in an importable module so that they
travel by reference, as real grid functions do (see `workloads.py`)."""

from __future__ import annotations

from typing import Any

import numpy as np

import girder


@girder.function
def byte_counts(source: girder.FileSource, lo: int, hi: int) -> Any:
    """The histogram of the bytes `[lo, hi)` of a file: one count per byte value."""
    data = np.memmap(source.path, dtype=np.uint8, mode="r", offset=lo, shape=(hi - lo,))
    counts = np.bincount(data, minlength=256)
    source.check()
    return counts


@girder.function
def add_counts(partials: list[Any]) -> Any:
    return np.sum(partials, axis=0)
