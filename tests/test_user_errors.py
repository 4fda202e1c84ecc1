"""Mistakes and failures a user can act on: partials and callable objects as grid functions, a
sync function returning a coroutine, worker-side tracebacks, failures caught by their type."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from gridfns import AsyncScale, Scale, add, divide, returns_coroutine
from processes import grid_on

import girder


async def test_partials_and_callable_objects_are_grid_functions(
    backend_url: str | None, tmp_path: Path
) -> None:
    async with grid_on(backend_url, tmp_path / "logs", workers=2) as (grid, _):
        assert await grid.call(functools.partial(add, 10), 5) == 15
        assert await grid.call(functools.partial(add, 20), 5) == 25  # not the cached 15
        assert await grid.call(functools.partial(divide, y=4), 2) == 0.5
        assert await grid.call(Scale(3), 5) == 15
        assert await grid.call(Scale(4), 5) == 20  # the factor is part of the identity
        assert await grid.call(AsyncScale(5), 5) == 25  # `async def __call__` is awaited
        assert await grid.call(girder.function(functools.partial(add, 1)), 1) == 2


def test_partials_and_objects_have_readable_names() -> None:
    assert girder.Request(functools.partial(add, 1), 2).readable() == "partial(add)(2)"
    assert girder.Request(Scale(2), 3).readable() == "Scale(3)"
    assert girder.function(AsyncScale(1)).is_async
    assert not girder.function(Scale(1)).is_async


async def test_a_sync_function_returning_a_coroutine_says_use_async_def() -> None:
    async with girder.Grid.local(workers=1) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(returns_coroutine, 3)
    assert caught.value.message.startswith("TypeError: grid function")
    assert "returned a coroutine" in caught.value.message
    assert "declare it with `async def`" in caught.value.message
