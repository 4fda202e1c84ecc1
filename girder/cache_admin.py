"""What `girder cache stats` and `girder cache clear` do, as functions a program may call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from girder.backends import open_backend
from girder.backends.base import CacheStats, StateBackend
from girder.config import Settings

T = TypeVar("T")

UNNAMED = "(unnamed)"
"""How outcomes completed without a function name are listed."""


async def _with_backend(settings: Settings, action: Callable[[StateBackend], Awaitable[T]]) -> T:
    backend = open_backend(settings.backend, settings=settings)
    await backend.connect()
    try:
        return await action(backend)
    finally:
        await backend.close()


async def cache_stats(settings: Settings) -> dict[str, object]:
    """The grid's cached results: entries and bytes, in total and per function."""
    stats: CacheStats = await _with_backend(settings, lambda backend: backend.cache_stats())
    return {
        "entries": stats.entries,
        "bytes": stats.bytes,
        "functions": {
            name or UNNAMED: {"entries": usage.entries, "bytes": usage.bytes}
            for name, usage in sorted(stats.functions.items())
        },
    }


async def cache_clear(settings: Settings, function: str | None = None) -> int:
    """Delete the grid's cached results (of the function named `function` only, if given: its
    full name as `cache_stats` lists it). Returns how many were deleted."""
    name = "" if function == UNNAMED else function
    return await _with_backend(settings, lambda backend: backend.cache_clear(name))


def format_cache_stats(stats: dict[str, object]) -> str:
    """`girder cache stats` as a table, the functions that use most bytes first."""
    functions = stats["functions"]
    assert isinstance(functions, dict)
    lines = [f"{'function':<60}{'entries':>10}{'bytes':>14}"]
    ranked = sorted(functions.items(), key=lambda item: (-item[1]["bytes"], item[0]))
    lines += [f"{name:<60}{use['entries']:>10}{use['bytes']:>14}" for name, use in ranked]
    lines.append(f"{'total':<60}{stats['entries']:>10}{stats['bytes']:>14}")
    return "\n".join(lines)
