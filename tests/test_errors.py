"""Errors: chains with every level's traceback, cycles, and bad input that harms nothing else."""

from __future__ import annotations

import pickle
import threading

import pytest
from gridfns import (
    add,
    divide,
    identity,
    make_lock,
    ping,
    ratio,
    ratio_of_ratio,
    self_cycle,
)

import girder


async def test_error_three_levels_down_carries_every_level() -> None:
    async with girder.Grid.local(workers=2) as grid:
        assert await grid.call(ratio, 5) == 1.25
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(ratio_of_ratio, 1)
    top = caught.value
    assert top.request == "ratio_of_ratio(1)"
    assert any("ratio_of_ratio" in line for line in top.stack)
    (middle,) = top.causes.values()
    assert list(top.causes) == ["ratio(1)"]
    assert any("in ratio" in line for line in middle.stack)
    (bottom,) = middle.causes.values()
    assert list(middle.causes) == ["divide(1, 0)"]
    assert bottom.message.startswith("ZeroDivisionError")
    assert any("return x / y" in line for line in bottom.stack)
    assert top.root_causes() == [bottom]
    shape = top.to_dict()
    assert set(shape) == {"msg", "req", "stack", "info"}
    assert shape["info"]["ratio(1)"]["info"]["divide(1, 0)"]["msg"] == bottom.message


async def test_sync_function_that_raises() -> None:
    async with girder.Grid.local(workers=1) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(divide, 1, 0)
        assert caught.value.request == "divide(1, 0)"
        assert "ZeroDivisionError" in caught.value.message
        assert any("return x / y" in line for line in caught.value.stack)
        assert await grid.call(divide, 1, 2) == 0.5  # the worker goes on


async def test_failures_are_not_cached() -> None:
    async with girder.Grid.local(workers=1) as grid:
        for _ in range(2):
            with pytest.raises(girder.RequestError):
                await grid.call(divide, 3, 0)
        assert grid.workers[0].stats.ran == 2


async def test_self_cycle_fails_naming_the_cycle() -> None:
    async with girder.Grid.local(workers=1) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(self_cycle, 1)
    assert caught.value.kind == "cycle"
    assert "self_cycle(1) -> self_cycle(1)" in caught.value.message


@pytest.mark.parametrize("workers", [1, 2])
async def test_two_step_cycle_fails_naming_the_cycle(workers: int) -> None:
    async with girder.Grid.local(workers=workers) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(ping, 4)
        assert caught.value.kind == "cycle"
        message = caught.value.message
        assert "cycle: " in message
        assert "ping(4) -> pong(4)" in message
        assert "pong(4) -> ping(4)" in message
        assert await grid.call(add, 1, 1) == 2  # nothing else is harmed


async def test_unserializable_argument_fails_only_its_request() -> None:
    lock = threading.Lock()
    async with girder.Grid.local(workers=2) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call_all([(add, 1, 2), (identity, lock), (add, 3, 4)])
        (failure,) = caught.value.causes.values()
        assert failure.kind == "invalid"
        assert "argument 0" in failure.message
        assert "lock" in failure.message
        assert failure.request.startswith("identity(<unlocked _thread.lock")
        # the other two ran and are cached
        assert await grid.call_all([(add, 1, 2), (add, 3, 4)]) == [3, 7]
        assert grid.client.stats.cache_hits >= 2


async def test_unserializable_result_fails_its_request() -> None:
    async with girder.Grid.local(workers=1) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(make_lock)
        assert caught.value.kind == "invalid"
        assert "result of make_lock()" in caught.value.message
        assert await grid.call(add, 2, 2) == 4


async def test_oversized_payload_fails_its_request() -> None:
    async with girder.Grid.local(workers=1, max_payload_bytes=1000) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(identity, "x" * 5000)
        assert caught.value.kind == "invalid"
        assert "over the limit of 1000" in caught.value.message
        assert await grid.call(identity, "small") == "small"


def _orphan(x: int) -> int:
    return x


async def test_unknown_function_on_the_worker_fails_its_request() -> None:
    _orphan.__module__ = "girder_no_such_module"
    orphan = girder.function(_orphan)
    # Allowed (so the worker tries the import), but nowhere to be found.
    async with girder.Grid.local(workers=1, allowed_modules=["girder_no_such_module"]) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(orphan, 1)
        assert caught.value.kind == "invalid"
        assert "girder_no_such_module._orphan cannot be imported" in caught.value.message
        assert grid.workers[0].id in caught.value.message
        assert await grid.call(add, 1, 2) == 3


def test_request_error_survives_pickling() -> None:
    inner = girder.RequestError("f(1)", "ValueError: x", ["line"])
    outer = girder.RequestError("g(1)", "1 sub-request failed", ["a", "b"], {"f(1)": inner})
    copy = pickle.loads(pickle.dumps(outer))
    assert copy.to_dict() == outer.to_dict()
