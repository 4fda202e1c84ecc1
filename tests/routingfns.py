"""Grid functions of the routing tests: several flows of one evaluation, and routed requests
(importable, as a worker process imports them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import girder

running = 0
"""User functions of `counted` running now in this process."""
most_running = 0
"""The most that ever ran at once in this process."""


@girder.function(cache=False)
async def counted(tag: str, index: int) -> str:
    """A slow sub-request that counts how many run at once in this process."""
    global running, most_running
    running += 1
    most_running = max(most_running, running)
    try:
        await asyncio.sleep(0.1)
    finally:
        running -= 1
    return f"{tag}{index}"


@girder.function(cache=False)
def most_at_once() -> int:
    """The most `counted` that ran at once in this process (then starts counting again)."""
    global most_running
    most, most_running = most_running, 0
    return most


@girder.function(cache=False)
async def gather_two(tag: str) -> list[str]:
    """Two `call_reentrant` awaited together, each of two slow sub-requests."""
    first, second = await asyncio.gather(
        girder.call_reentrant([(counted, tag, 0), (counted, tag, 1)]),
        girder.call_reentrant([(counted, tag, 2), (counted, tag, 3)]),
    )
    return [*first, *second]


@girder.function(cache=False)
async def task_group(tag: str, flows: int) -> list[str]:
    """`flows` flows in a task group; each parks, counts a sub-request's value, parks again."""

    async def flow(index: int) -> str:
        (value,) = await girder.call_reentrant([(counted, tag, index)])
        (again,) = await girder.call_reentrant([(counted, tag + "+", index)])
        return value + again

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(flow(index)) for index in range(flows)]
    return [task.result() for task in tasks]


@girder.function
def where(n: int) -> tuple[int, str | None]:
    """Which node ran it."""
    return n, girder.current_node()


@girder.function
async def route_to(pool: str, n: int) -> dict[str, object]:
    """Where this runs, and where its sub-requests run: one routed to `pool`, one not."""
    routed, local = await girder.call_reentrant(
        [girder.Request(where, n, pool=pool), girder.Request(where, n + 1)]
    )
    return {"self": girder.current_node(), "routed": routed, "local": local}


@girder.function
def named_pool(pool: str) -> str:
    """A function with its own argument called `pool`."""
    return pool


@girder.function
async def needs_itself_in(pool: str) -> None:
    """Needs its own result, routed to `pool`: a cycle across pools."""
    await girder.call_reentrant([girder.Request(needs_itself_in, pool, pool=pool)])


@girder.function
async def sleeps_in(directory: str) -> None:
    """Marks where it starts and that it stopped; sleeps long enough to be cancelled."""
    node = girder.current_node()
    _mark(directory, f"start-{node}")
    try:
        await asyncio.sleep(60)
    finally:
        _mark(directory, f"stop-{node}")


def _mark(directory: str, name: str) -> None:
    Path(directory, name).touch()


@girder.function
async def waits_for(pool: str, directory: str) -> None:
    """Waits for `sleeps_in` routed to `pool`."""
    await girder.call_reentrant([girder.Request(sleeps_in, directory, pool=pool)])


left_behind: set[asyncio.Task[None]] = set()


@girder.function(cache=False)
async def leaves_a_flow_behind(tag: str) -> str:
    """Returns while a flow it started still waits in `call_reentrant`."""

    async def flow() -> None:
        await girder.call_reentrant([(counted, tag, 0)])

    task = asyncio.get_running_loop().create_task(flow())
    left_behind.add(task)
    task.add_done_callback(left_behind.discard)
    await asyncio.sleep(0)  # the flow parks
    return tag


@girder.function
async def sleeper(directory: str, index: int) -> None:
    """Marks its start and its stop; sleeps long enough to be cancelled."""
    _mark(directory, f"start-{index}")
    try:
        await asyncio.sleep(60)
    finally:
        _mark(directory, f"stop-{index}")


@girder.function
async def gather_sleepers(directory: str) -> None:
    """Two flows, each parked on a sleeper."""
    await asyncio.gather(
        girder.call_reentrant([(sleeper, directory, 0)]),
        girder.call_reentrant([(sleeper, directory, 1)]),
    )
