"""Mistakes and failures a user can act on: partials and callable objects as grid functions, a
sync function returning a coroutine, worker-side tracebacks, failures caught by their type."""

from __future__ import annotations

import functools
import pickle
import sys
import traceback
from pathlib import Path

import pytest
from gridfns import (
    AsyncScale,
    Overdrawn,
    Scale,
    add,
    catch_below,
    divide,
    ratio_of_ratio,
    returns_coroutine,
    withdraw,
    withdraw_twice,
)
from processes import grid_on

import girder
from girder.errors import RequestError, catchable


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


# -- failures caught by their original type ------------------------------------------------------


async def test_except_zero_division_error_catches_a_failed_request(
    backend_url: str | None, tmp_path: Path
) -> None:
    async with grid_on(backend_url, tmp_path / "logs", workers=2) as (grid, _):
        with pytest.raises(ZeroDivisionError) as direct:
            await grid.call(divide, 1, 0)
        with pytest.raises(ZeroDivisionError) as nested:  # the type of the root cause
            await grid.call(ratio_of_ratio, 1)
        # Inside a grid function too, around `call_reentrant`.
        assert await grid.call(catch_below, 2) == "caught RequestError[ZeroDivisionError] (True)"
    for caught in (direct.value, nested.value):
        assert isinstance(caught, girder.RequestError)  # it stays a RequestError
        assert caught.exc_type == "builtins:ZeroDivisionError"
        assert caught.kind == "error"
    assert nested.value.request == "ratio_of_ratio(1)"


async def test_a_users_exception_type_is_caught_too(
    backend_url: str | None, tmp_path: Path
) -> None:
    # Overdrawn's __init__ takes (account, amount): the error is built without calling it.
    async with grid_on(backend_url, tmp_path / "logs", workers=2) as (grid, _):
        with pytest.raises(Overdrawn) as caught:
            await grid.call(withdraw_twice, "acc-1")
        handle = grid.submit(withdraw, "acc-2", 5)
        with pytest.raises(Overdrawn):
            await handle
    assert isinstance(caught.value, girder.RequestError)
    assert caught.value.exc_type == "gridfns:Overdrawn"
    assert "Overdrawn: account acc-1 is overdrawn by 1" in caught.value.message


def _record(exc_type: str) -> dict[str, object]:
    return {"msg": "it failed", "req": "f(1)", "stack": [], "info": {}, "type": exc_type}


def test_types_that_cannot_be_found_or_subclassed_give_a_plain_request_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = tmp_path / "planted_module.py"
    mark = tmp_path / "imported"
    planted.write_text(f"open({str(mark)!r}, 'w').close()\nclass Boom(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Fussy(Exception):
        def __init_subclass__(cls) -> None:
            raise TypeError("no subclasses")

    monkeypatch.setattr(sys.modules[__name__], "Fussy", Fussy, raising=False)
    for name in (
        "planted_module:Boom",  # not imported here: never imported to find it
        f"{__name__}:Fussy",  # refuses subclasses
        "builtins:KeyboardInterrupt",  # not an Exception: `except` of it must stay exact
        "builtins:len",  # not a type at all
        "girder.errors:BackendError",  # girder's own errors are not borrowed
        "gridfns:Scale.<locals>.Nope",
        "malformed",
    ):
        error = RequestError.from_dict(_record(name))
        assert type(error) is RequestError, name
        assert error.exc_type == name  # kept, for whoever reads it
    assert "planted_module" not in sys.modules
    assert not mark.exists()


def test_catchable_subclasses_are_made_once_and_survive_pickling() -> None:
    assert catchable("builtins:ZeroDivisionError") is catchable("builtins:ZeroDivisionError")
    error = RequestError.from_dict(_record("builtins:FileNotFoundError"))
    assert isinstance(error, FileNotFoundError)
    assert isinstance(error, OSError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.to_dict(kinds=True) == error.to_dict(kinds=True)


# -- the worker-side traceback --------------------------------------------------------------------


async def test_a_printed_failure_shows_every_levels_worker_side_traceback(
    backend_url: str | None, tmp_path: Path
) -> None:
    async with grid_on(backend_url, tmp_path / "logs", workers=2) as (grid, _):
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(ratio_of_ratio, 1)
    printed = str(caught.value)
    lines = printed.splitlines()
    assert lines[0] == (
        "ratio_of_ratio(1): 1 sub-request failed; at the bottom: divide(1, 0): "
        "ZeroDivisionError: division by zero"
    )
    assert "[1] ratio_of_ratio(1)" in lines
    assert "[2] ratio(1), needed by ratio_of_ratio(1)" in lines
    assert "[3] divide(1, 0), needed by ratio(1)" in lines
    # Each level's own frames, from the worker: the user's lines, not girder's.
    assert any("in ratio_of_ratio" in line for line in lines)
    assert any(line.strip() == "return x / y" for line in lines)
    assert lines[-1].strip() == "ZeroDivisionError: division by zero"
    assert "girder/scheduler" not in printed
    assert "girder/functions.py" not in printed
    # What Python prints for an uncaught error (and logging.exception) shows it too.
    shown = "".join(traceback.format_exception(caught.value))
    assert "[3] divide(1, 0), needed by ratio(1)" in shown


def test_an_error_without_tracebacks_prints_its_one_line() -> None:
    error = RequestError("loop(1)", "cycle: loop(1) -> loop(1)", kind="cycle")
    assert str(error) == "loop(1): cycle: loop(1) -> loop(1)"


# -- states that `assert` used to guard (gone under `python -O`) ----------------------------------


async def test_calling_a_grid_never_started_says_how_to_start_it() -> None:
    grid = girder.Grid.local(workers=1)
    with pytest.raises(girder.GirderError, match=r"has not started: call it inside `async with"):
        await grid.call(add, 1, 2)
    with pytest.raises(girder.GirderError, match="has not started"):
        async for _ in grid.stream(add, 1, 2):
            pass
