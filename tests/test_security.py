"""Signed payloads and bad input on the distributed grid, in real worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from gridfns import add, touch
from processes import GridProcesses, nodes, wait_for_nodes, wait_until

import girder
from girder.backends.redis_keys import (
    DONE,
    F_OUTCOME,
    F_PAYLOAD,
    F_STATUS,
    RedisKeys,
    chunk_fields,
    chunked,
    unchunked,
)
from girder.errors import ConfigurationError

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
    payload = await _stored(raw, record, F_PAYLOAD)
    assert isinstance(payload, bytes)
    return record, payload


async def _stored(raw: aioredis.Redis, record: str, field: str) -> bytes | None:
    """The payload or outcome (`field`) stored in `record`, its chunks joined."""
    return unchunked(await raw.hmget(record, chunk_fields(field)))


async def _store(raw: aioredis.Redis, record: str, field: str, value: bytes) -> None:
    """Overwrite the payload or outcome (`field`) of `record`, in chunks as the backend stores
    them."""
    await raw.hdel(record, *chunk_fields(field))
    await raw.hset(record, mapping=chunked(field, value))  # type: ignore[arg-type]


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
        assert payload[:1] == b"\x02"  # signed (a 128-bit signature)
        body = bytearray(payload)
        body[-3] ^= 0x01
        await _store(raw_redis, record, F_PAYLOAD, bytes(body))
        record, _ = await _pending_payload_of(grid, raw_redis, unsigned)
        marker = tmp_path / "unpickled"
        exploit = b"\x00" + pickle.dumps(_Exploit(str(marker)))
        await _store(raw_redis, record, F_PAYLOAD, exploit)

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


# -- a secret is required on a shared backend --------------------------------------------------


@pytest.fixture
def no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test (and the processes it starts) has no GIRDER_SECRET."""
    monkeypatch.delenv("GIRDER_SECRET", raising=False)
    monkeypatch.delenv("GIRDER_INSECURE", raising=False)


@pytest.mark.usefixtures("no_secret")
async def test_a_client_refuses_redis_without_a_secret(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for make in (
        lambda: girder.Grid.connect(redis_url),
        lambda: girder.Grid.local(workers=1, backend=redis_url),
    ):
        with pytest.raises(ConfigurationError) as caught:
            make()
        assert "no secret is set" in str(caught.value)
        assert "GIRDER_SECRET" in str(caught.value)
        assert "GIRDER_INSECURE=1" in str(caught.value)
    assert await _no_nodes(redis_url)

    monkeypatch.setenv("GIRDER_INSECURE", "1")
    with caplog.at_level(logging.WARNING, logger="girder"):
        async with girder.Grid.connect(redis_url, **OPTIONS):
            pass
    assert any(r.levelno == logging.WARNING and "INSECURE" in r.message for r in caplog.records)


@pytest.mark.usefixtures("no_secret")
async def test_no_secret_is_needed_in_process() -> None:
    async with girder.Grid.local(workers=1) as grid:
        assert await grid.call(add, 1, 2) == 3


def _girder(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "girder", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.usefixtures("no_secret")
async def test_a_worker_refuses_redis_without_a_secret(redis_url: str, tmp_path: Path) -> None:
    procs = GridProcesses(redis_url, tmp_path)
    try:
        for args in (("worker", "--import", "gridfns"), ("distributor",)):
            done = await asyncio.to_thread(_girder, *args, "--backend", redis_url, env=procs.env)
            assert done.returncode == 2, done.stderr
            assert f"girder {args[0]}: the backend" in done.stderr
            assert "GIRDER_SECRET" in done.stderr
            assert "Traceback" not in done.stderr
        assert await _no_nodes(redis_url)

        procs.env["GIRDER_INSECURE"] = "1"
        procs.worker("w1")
        await wait_for_nodes(redis_url, workers=1, distributors=0)
        assert "INSECURE" in procs.log_text()
    finally:
        procs.stop_all()


async def _no_nodes(url: str) -> bool:
    return not await nodes(url)


# -- functions by name -------------------------------------------------------------------------


@pytest.mark.usefixtures("no_secret")
async def test_a_forged_payload_naming_os_system_runs_nothing(
    redis_url: str, raw_redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Even insecure (unsigned payloads accepted), a worker resolves no function by name outside
    its allowed modules."""
    procs = GridProcesses(redis_url, tmp_path, GIRDER_INSECURE="1")
    marker = tmp_path / "os-system-ran"
    try:
        procs.distributor()
        await wait_for_nodes(redis_url, workers=0)
        async with girder.Grid.connect(redis_url, insecure=True, **OPTIONS) as grid:
            victim = girder.Request(add, 6, 7)
            handle = grid.submit(add, 6, 7)
            record, _ = await _pending_payload_of(grid, raw_redis, victim)
            forged = (("os", "system"), "system", (f"touch {marker}",), {}, "forged-job")
            await _store(raw_redis, record, F_PAYLOAD, b"\x00" + pickle.dumps(forged))

            procs.worker("w1")
            with pytest.raises(girder.RequestError) as caught:
                await asyncio.wait_for(handle, 30)
            assert caught.value.kind == "invalid"
            assert "function os.system is not allowed" in caught.value.message
            assert "GIRDER_ALLOWED_MODULES" in caught.value.message
            assert await grid.call(add, 2, 3) == 5  # the worker goes on
        assert not marker.exists()
        assert "os.system is not allowed" in procs.log_text()
    finally:
        procs.stop_all()


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
        await _store(raw_redis, record, F_PAYLOAD, payload)

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
        outcome = await _stored(raw_redis, keys.record(girder.Request(add, 40, 2).key), F_OUTCOME)
        assert isinstance(outcome, bytes)

        cached = girder.Request(add, 1, 1).key
        fields = {F_STATUS: DONE, **chunked(F_OUTCOME, outcome)}
        await raw_redis.hset(keys.record(cached), mapping=fields)  # type: ignore[arg-type]
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


# -- a node without the secret -----------------------------------------------------------------


async def test_a_worker_without_the_secret_runs_and_caches_nothing(
    redis_url: str, raw_redis: aioredis.Redis, tmp_path: Path
) -> None:
    procs = GridProcesses(redis_url, tmp_path, GIRDER_SECRET=SECRET)
    try:
        procs.distributor()
        del procs.env["GIRDER_SECRET"]
        procs.env["GIRDER_INSECURE"] = "1"
        procs.worker("secretless")
        await wait_for_nodes(redis_url, workers=1)
        marker = tmp_path / "ran"
        async with girder.Grid.connect(redis_url, secret=SECRET, **OPTIONS) as grid:
            with pytest.raises(girder.RequestError) as caught:
                await asyncio.wait_for(grid.call(touch, str(marker)), 30)
            assert caught.value.kind == "invalid"
            assert "without GIRDER_SECRET" in caught.value.message
            key = girder.Request(touch, str(marker)).key
            assert not await raw_redis.exists(RedisKeys("girder").record(key))
            assert await grid.backend.cache_size() == 0
        assert not marker.exists()
        assert "signed, and this node has no secret" in procs.log_text()
    finally:
        procs.stop_all()
