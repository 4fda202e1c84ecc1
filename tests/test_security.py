"""Signed payloads and bad input on the distributed grid, in real worker processes."""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from gridfns import add, touch
from processes import GridProcesses, nodes, wait_for_nodes, wait_until

import girder
from girder.backends.redis_keys import DONE, F_OUTCOME, F_PAYLOAD, F_STATUS, RedisKeys

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

SECRET = "correct horse battery staple"
OPTIONS: dict[str, Any] = {"heartbeat_interval": 0.2, "heartbeat_ttl": 1.5, "idle_poll": 0.5}


@pytest.fixture
def grid_processes(redis_url: str, tmp_path: Path) -> Iterator[GridProcesses]:
    procs = GridProcesses(redis_url, tmp_path, GIRDER_SECRET=SECRET)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


class _Exploit:
    """Unpickling this creates a directory: proof that bytes were unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


async def _pending_payload_of(
    grid: girder.Grid, raw: aioredis.Redis, request: girder.Request
) -> tuple[str, bytes]:
    record = RedisKeys("girder").record(request.key)

    async def stored() -> bool:
        return bool(await raw.hget(record, F_PAYLOAD))

    await wait_until(stored, what="the request's record")
    payload = await raw.hget(record, F_PAYLOAD)
    assert isinstance(payload, bytes)
    return record, payload


async def test_tampered_and_unsigned_payloads_are_never_unpickled(
    grid_processes: GridProcesses, redis_url: str, raw_redis: aioredis.Redis, tmp_path: Path
) -> None:
    grid_processes.distributor()
    await wait_for_nodes(redis_url, workers=0)
    async with girder.Grid.connect(redis_url, secret=SECRET, **OPTIONS) as grid:
        # Submitted while no worker runs, so we can change the stored payload first.
        tampered = girder.Request(add, 20, 22)
        unsigned = girder.Request(add, 1, 1)
        tampered_handle = grid.submit(add, 20, 22)
        unsigned_handle = grid.submit(add, 1, 1)
        record, payload = await _pending_payload_of(grid, raw_redis, tampered)
        assert payload[:1] == b"\x01"  # signed
        body = bytearray(payload)
        body[-3] ^= 0x01
        await raw_redis.hset(record, F_PAYLOAD, bytes(body))
        record, _ = await _pending_payload_of(grid, raw_redis, unsigned)
        marker = tmp_path / "unpickled"
        exploit = b"\x00" + pickle.dumps(_Exploit(str(marker)))
        await raw_redis.hset(record, F_PAYLOAD, exploit)

        grid_processes.worker("w1")
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(tampered_handle, 30)
        assert caught.value.kind == "invalid"
        assert "wrong signature" in caught.value.message
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(unsigned_handle, 30)
        assert "not signed" in caught.value.message
        assert not marker.exists()
        assert await grid.call(add, 2, 3) == 5  # the worker goes on
    log = grid_processes.log_text()
    assert "request rejected" in log
    assert "wrong signature" in log


async def test_garbage_in_queues_harms_nothing(
    grid_processes: GridProcesses, redis_url: str, raw_redis: aioredis.Redis
) -> None:
    grid_processes.distributor()
    worker = grid_processes.worker("w1")
    await wait_for_nodes(redis_url, workers=1)
    keys = RedisKeys("girder")
    garbage = [b"\xff\xfe\x00garbage", b"", b"{not a key}", os.urandom(64)]
    for target in (keys.work("pool"), keys.work("w1")):
        await raw_redis.rpush(target, *garbage)
        await raw_redis.lpush(target, *garbage)
    async with girder.Grid.connect(redis_url, secret=SECRET, **OPTIONS) as grid:
        assert await grid.call_all([(add, i, i) for i in range(20)]) == [2 * i for i in range(20)]

    async def drained() -> bool:
        return sum(n.work for n in await nodes(redis_url)) == 0

    await wait_until(drained, what="garbage to be discarded")
    assert worker.poll() is None  # still running


async def test_wrong_secret_fails_clearly(grid_processes: GridProcesses, redis_url: str) -> None:
    grid_processes.distributor()
    grid_processes.worker("w1")
    await wait_for_nodes(redis_url, workers=1)
    async with girder.Grid.connect(redis_url, secret="another secret", **OPTIONS) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(grid.call(add, 7, 7), 30)
    assert caught.value.kind == "invalid"
    assert "wrong signature" in caught.value.message


async def test_oversized_payload_fails_only_its_request(
    grid_processes: GridProcesses, redis_url: str
) -> None:
    grid_processes.distributor()
    grid_processes.worker("w1")
    await wait_for_nodes(redis_url, workers=1)
    async with girder.Grid.connect(
        redis_url, secret=SECRET, max_payload_bytes=10_000, **OPTIONS
    ) as grid:
        with pytest.raises(girder.RequestError) as caught:
            await grid.call_all([(add, "x" * 50_000, "y"), (add, 1, 2)])
        (failure,) = caught.value.causes.values()
        assert "over the limit of 10000" in failure.message
        assert await grid.call(add, 1, 2) == 3


# -- signatures are bound to their key and record kind -----------------------------------------


async def test_a_signed_payload_copied_onto_another_key_is_refused(
    grid_processes: GridProcesses, redis_url: str, raw_redis: aioredis.Redis, tmp_path: Path
) -> None:
    grid_processes.distributor()
    await wait_for_nodes(redis_url, workers=0)
    async with girder.Grid.connect(redis_url, secret=SECRET, **OPTIONS) as grid:
        original = girder.Request(touch, str(tmp_path / "original"))
        target = girder.Request(touch, str(tmp_path / "target"))
        original_handle = grid.submit(touch, str(tmp_path / "original"))
        target_handle = grid.submit(touch, str(tmp_path / "target"))
        _, payload = await _pending_payload_of(grid, raw_redis, original)
        record, _ = await _pending_payload_of(grid, raw_redis, target)
        await raw_redis.hset(record, F_PAYLOAD, payload)

        grid_processes.worker("w1")
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(target_handle, 30)
        assert caught.value.kind == "invalid"
        assert "signed for another key" in caught.value.message
        assert await asyncio.wait_for(original_handle, 30) == str(tmp_path / "original")
    assert not (tmp_path / "target").exists()


async def test_a_signed_outcome_moved_to_another_key_is_refused(
    grid_processes: GridProcesses, redis_url: str, raw_redis: aioredis.Redis
) -> None:
    """Copied into another key's cached result, or into a notification naming another key."""
    grid_processes.distributor()
    grid_processes.worker("w1")
    await wait_for_nodes(redis_url, workers=1)
    keys = RedisKeys("girder")
    async with girder.Grid.connect(redis_url, secret=SECRET, **OPTIONS) as grid:
        assert await grid.call(add, 40, 2) == 42
        outcome = await raw_redis.hget(keys.record(girder.Request(add, 40, 2).key), F_OUTCOME)
        assert isinstance(outcome, bytes)

        cached = girder.Request(add, 1, 1).key
        await raw_redis.hset(keys.record(cached), mapping={F_STATUS: DONE, F_OUTCOME: outcome})
        with pytest.raises(girder.RequestError) as caught:
            await grid.call(add, 1, 1)
        assert caught.value.kind == "invalid"
        assert "signed for another key" in caught.value.message

    # A client waiting on a pool nobody serves, so only the forged notification can answer.
    async with girder.Grid.connect(redis_url, pool="idle", secret=SECRET, **OPTIONS) as grid:
        waited = girder.Request(add, 2, 2).key
        handle = grid.submit(add, 2, 2)
        await wait_until(lambda: _exists(raw_redis, keys.record(waited)), what="the submission")
        note = f"{len(waited)}:{waited}".encode() + outcome
        await raw_redis.rpush(keys.inbox(grid.client.id), note)
        with pytest.raises(girder.RequestError) as caught:
            await asyncio.wait_for(handle, 30)
        assert caught.value.kind == "invalid"
        assert "signed for another key" in caught.value.message


async def _exists(raw: aioredis.Redis, key: str) -> bool:
    return bool(await raw.exists(key))
