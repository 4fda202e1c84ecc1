"""Several answers per request: async-generator grid functions, `grid.stream` and
`girder.stream`; on the embedded grid and on Redis with a worker process.

One worker in both cases: a grid function that streams a sub-request can only get its answers
if it passes the worker's baton while it waits.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from gridfns import (
    counting,
    endless,
    every_answer,
    every_gated_answer,
    fails_after,
    gated_answers,
    last_of_counting,
    whereabouts,
)
from processes import CLIENT_OPTIONS, GridProcesses, grid_on, wait_until

import girder

OPTIONS = CLIENT_OPTIONS

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def grid(
    backend_url: str | None, tmp_path: Path
) -> AsyncIterator[tuple[girder.Grid, GridProcesses | None]]:
    """A grid of one worker: in this process on memory, or worker processes on Redis."""
    async with grid_on(backend_url, tmp_path / "logs", workers=1) as found:
        yield found


def _runs(directory: Path) -> list[str]:
    return [path.name for path in directory.glob("run-*")]


async def _collect(stream: AsyncIterator[Any], into: list[Any]) -> None:
    async for answer in stream:
        into.append(answer)


async def _until_count(answers: list[Any], count: int, what: str) -> None:
    async def enough() -> bool:
        return len(answers) >= count

    await wait_until(enough, timeout=30, what=f"{count} answers of {what}")


async def test_every_waiter_sees_the_answers_in_order_and_a_late_joiner_the_latest_first(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    first: list[str] = []
    second: list[str] = []
    late: list[str] = []
    streams = [
        asyncio.create_task(_collect(client.stream(gated_answers, "t", str(marks)), first)),
        asyncio.create_task(_collect(client.stream(gated_answers, "t", str(marks)), second)),
    ]
    call = client.submit(gated_answers, "t", str(marks))  # waits for the value alone
    await _until_count(first, 1, "the first caller")
    await _until_count(second, 1, "the second caller")
    assert not call.done()  # a partial answer resolves no call
    (marks / "open-2").touch()
    await _until_count(first, 2, "the first caller")
    await _until_count(second, 2, "the second caller")
    streams.append(
        asyncio.create_task(_collect(client.stream(gated_answers, "t", str(marks)), late))
    )
    await _until_count(late, 1, "the late joiner")
    assert late == ["t:2"]  # the latest partial answer first
    (marks / "open-3").touch()
    await asyncio.wait_for(asyncio.gather(*streams), 30)
    assert first == second == ["t:1", "t:2", "t:3"]
    assert late == ["t:2", "t:3"]
    assert await call == "t:3"
    assert len(_runs(marks)) == 1  # it ran once, for all four
    # Only the last answer is cached, and it is the value.
    assert await client.call(gated_answers, "t", str(marks)) == "t:3"
    assert [answer async for answer in client.stream(gated_answers, "t", str(marks))] == ["t:3"]
    assert len(_runs(marks)) == 1


async def test_call_returns_the_last_answer(
    grid: tuple[girder.Grid, GridProcesses | None],
) -> None:
    client, _ = grid
    assert await client.call(counting, "c", 3) == "c:3"
    assert await client.backend.cache_size() == 1


async def test_a_stream_crosses_processes(
    grid: tuple[girder.Grid, GridProcesses | None],
) -> None:
    client, procs = grid
    answers = [answer async for answer in client.stream(whereabouts, 3)]
    assert [index for _, index in answers] == [0, 1, 2]
    pids = {pid for pid, _ in answers}
    if procs is None:
        assert pids == {os.getpid()}
    else:
        assert len(pids) == 1
        assert os.getpid() not in pids  # ran in the worker process; the answers came here


async def test_call_reentrant_on_a_streaming_function_returns_its_last_answer(
    grid: tuple[girder.Grid, GridProcesses | None],
) -> None:
    client, _ = grid
    assert await client.call(last_of_counting, "r", 4) == "r:4"


async def test_a_grid_function_streaming_a_sub_request_gets_every_answer(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    assert await client.call(every_answer, "s", 5) == [f"s:{i}" for i in range(1, 6)]
    (marks / "open-2").touch()
    (marks / "open-3").touch()
    assert await client.call(every_gated_answer, "g", str(marks)) == ["g:1", "g:2", "g:3"]


async def test_a_stream_of_a_plain_function_is_its_value(
    grid: tuple[girder.Grid, GridProcesses | None],
) -> None:
    client, _ = grid
    assert [answer async for answer in client.stream(last_of_counting, "p", 2)] == ["p:2"]


async def test_leaving_a_stream_cancels_the_streaming_request(
    grid: tuple[girder.Grid, GridProcesses | None], marks: Path
) -> None:
    client, _ = grid
    async with aclosing(client.stream(endless, str(marks))) as stream:
        async for answer in stream:
            assert answer == 1
            break

    async def stopped() -> bool:
        return (marks / "stop-0").exists()

    await wait_until(stopped, timeout=30, what="the streaming request to stop")
    assert await client.backend.cache_size() == 0


async def test_a_failure_ends_the_stream_after_the_answers_before_it(
    grid: tuple[girder.Grid, GridProcesses | None],
) -> None:
    client, _ = grid
    answers: list[str] = []
    with pytest.raises(girder.RequestError, match="ValueError: f broke after 2"):
        await _collect(client.stream(fails_after, "f", 2), answers)
    assert answers == ["f:1", "f:2"]
    with pytest.raises(girder.RequestError, match="yielded no answer"):
        await client.call(counting, "none", 0)
    assert await client.backend.cache_size() == 0
