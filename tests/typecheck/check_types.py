"""What mypy sees of girder's API: checked by `mypy --strict` (tests/test_typing.py), and run.

Every `assert_type` states the type mypy must infer; every `# type: ignore[code]` marks a
mistake mypy must report (`warn_unused_ignores` fails the check when it does not). `exercise`
also runs on a real grid, so that the types stated here are the values girder gives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any, assert_type

import girder


@girder.function
async def power(base: int, exp: int = 2) -> int:
    return int(base**exp)


@girder.function(cache=False, version="1")
def label(n: int, *, prefix: str = "#") -> str:
    return f"{prefix}{n}"


@girder.function
async def countdown(n: int) -> AsyncIterator[float]:
    for i in range(n, -1, -1):
        yield float(i)


@girder.function
async def total(n: int) -> int:
    """Re-entrant, typed from one function: `call_reentrant(power, n)` is an int."""
    square = await girder.call_reentrant(power, n)
    assert_type(square, int)
    values = await girder.call_reentrant([(power, n, 3), (label, n)])
    assert_type(values, list[Any])
    return square + int(values[0])


def halve(x: float) -> float:
    """Not a grid function: typed just the same (a worker runs it only from an allowed
    module, so `exercise` does not call it)."""
    return x / 2


async def exercise(grid: girder.Grid) -> None:
    """The calls, with the types mypy infers and the values girder returns."""
    squared = await grid.call(power, 3)
    assert_type(squared, int)
    assert squared == 9

    text = await grid.call(label, 4, prefix="n")
    assert_type(text, str)
    assert text == "n4"

    last = await grid.call(countdown, 3)
    assert_type(last, float)
    assert last == 0.0

    assert_type(await grid.call(total, 2), int)
    assert await grid.call(total, 2) == 4 + 8

    within = await grid.call(power, 2, 5, timeout=30)
    assert_type(within, int)
    assert within == 32

    handle = grid.submit(power, 5)
    assert_type(handle, girder.Handle[int])
    assert_type(await handle, int)
    assert await handle == 25
    assert_type(grid.submit(label, 1), girder.Handle[str])

    routed = await grid.call(girder.Request(power, 6))
    assert_type(routed, Any)
    assert routed == 36

    values = await grid.call_all([(power, 2), (label, 3)])
    assert values == [4, "#3"]

    # Calling a grid function directly calls the function: an async one gives a coroutine.
    coroutine = assert_type(power(2), Coroutine[Any, Any, int])
    assert await coroutine == 4
    assert_type(label(1), str)
    typed: girder.GridFunction[[int, int], Coroutine[Any, Any, int]] = power
    assert typed is power


async def only_checked(grid: girder.Grid) -> None:
    """Never run: a plain function, then mistakes mypy must report (the code in the comment)."""
    assert_type(await grid.call(halve, 3.0), float)
    await grid.call(power, "3")  # type: ignore[call-overload]
    await grid.call(power)  # type: ignore[call-overload]
    await grid.call(label, 1, prefix=2)  # type: ignore[arg-type]
    await grid.call(label, 1, suffix="x")  # type: ignore[call-arg, arg-type]
    grid.submit(power, 1.5)  # type: ignore[call-overload]
    await girder.call_reentrant(power, "2")  # type: ignore[call-overload]
    wrong: str = await grid.call(power, 3)  # type: ignore[call-overload]
    also_wrong: str = await grid.submit(power, 3)  # type: ignore[call-overload]
    await grid.call(girder.Request(power, 1), 2)  # type: ignore[call-overload]
    print((await grid.call(label, 1)) + 1)  # type: ignore[operator]
    del wrong, also_wrong
