"""`grid.as_completed` (handles as they finish) and `progress=True` (a tqdm bar on stderr in a
terminal)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gridfns import add, divide, nap, sleepy_tree
from test_cancel import _every_started_leaf_stops, _marks, _wait_marks

import girder

pytestmark = pytest.mark.timeout(60)


async def test_as_completed_gives_the_quickest_first() -> None:
    naps = [600, 450, 300, 150, 0]  # submitted slowest first
    async with girder.Grid.local(workers=2) as grid:
        order = [
            await handle
            async for handle in grid.as_completed(
                [(nap, ms, index) for index, ms in enumerate(naps)]
            )
        ]
    assert order == [4, 3, 2, 1, 0]


async def test_as_completed_takes_handles_and_gives_failures_when_awaited() -> None:
    async with girder.Grid.local(workers=2) as grid:
        submitted = grid.submit(add, 1, 2)
        seen: dict[str, object] = {}
        async for handle in grid.as_completed([submitted, (divide, 1, 0)]):
            assert handle.done()
            try:
                seen[handle.request.function.short_name] = await handle
            except girder.RequestError as error:
                seen[handle.request.function.short_name] = error.message
        assert seen["add"] == 3
        assert "ZeroDivisionError" in str(seen["divide"])


async def test_leaving_as_completed_early_cancels_what_it_started(marks: Path) -> None:
    async with girder.Grid.local(workers=2) as grid:
        sleepers = [(sleepy_tree, 0, 1, index, str(marks)) for index in range(3)]
        iterator = grid.as_completed([(nap, 0, 7), *sleepers])
        async for handle in iterator:
            assert await handle == 7
            await _wait_marks(marks, "start-", 3)
            break
        await iterator.aclose()
        await _every_started_leaf_stops(marks)
        assert len(_marks(marks, "stop-")) == 3


async def test_call_all_with_progress_draws_a_bar_to_its_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with girder.Grid.local(workers=2) as grid:
        values = await grid.call_all([(nap, 20, index) for index in range(10)], progress=True)
    assert values == list(range(10))
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "call_all" in final
    assert "10/10" in final


async def test_as_completed_with_progress_draws_a_bar_to_its_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with girder.Grid.local(workers=2) as grid:
        requests = [(add, index, 100) for index in range(10)]
        seen = [await handle async for handle in grid.as_completed(requests, progress=True)]
    assert sorted(seen) == [index + 100 for index in range(10)]
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "as_completed" in final
    assert "10/10" in final


async def test_without_progress_nothing_is_drawn(capsys: pytest.CaptureFixture[str]) -> None:
    async with girder.Grid.local(workers=1) as grid:
        await grid.call_all([(add, 1, index) for index in range(5)])
    assert "it/s" not in capsys.readouterr().err
    await asyncio.sleep(0)
