"""Large values: results and arguments over `large_value_bytes` travel as blobs, stored once by
digest, fetched only by whoever needs the value, verified, and deleted after their records."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from gridfns import (
    big,
    big_again,
    big_answers,
    big_uncached,
    digest_of,
    digest_through_a_child,
    length_of_big,
    pattern,
)
from processes import CLIENT_OPTIONS, GridProcesses, grid_on, wait_for_nodes, wait_until

import girder
from girder.backends.base import RequestState, StateBackend
from girder.backends.memory import MemoryBackend
from girder.backends.redis import RedisBackend

MIB = 1024 * 1024
THRESHOLD = MIB  # the default of `large_value_bytes`


@pytest.fixture
async def grid(backend_url: str | None, tmp_path: Path) -> AsyncIterator[girder.Grid]:
    """One worker: in this process on memory, or a worker process on Redis."""
    async with grid_on(backend_url, tmp_path / "logs", workers=1) as (client, _):
        yield client


async def test_values_just_under_and_over_the_threshold_round_trip(grid: girder.Grid) -> None:
    under, over = THRESHOLD - 4096, THRESHOLD + 4096
    assert await grid.call(big, under, 1) == pattern(under, 1)
    assert await grid.backend.blobs() == {}
    assert await grid.call(big, over, 1) == pattern(over, 1)
    assert len(await grid.backend.blobs()) == 1
    # From the cache now: the client fetches the blob again.
    assert await grid.call(big, over, 1) == pattern(over, 1)


async def test_arguments_of_a_few_mib_reach_the_worker(grid: girder.Grid) -> None:
    data = pattern(5 * MIB, 7)
    assert await grid.call(digest_of, data) == hashlib.sha256(data).hexdigest()
    [size] = (await grid.backend.blobs()).values()
    assert size > 5 * MIB


async def test_identical_values_are_stored_once(grid: girder.Grid) -> None:
    size = 2 * MIB
    values = await grid.call_all([(big, size, 3), (big_again, size, 3), (big, size, 4)])
    assert values == [pattern(size, 3), pattern(size, 3), pattern(size, 4)]
    assert len(await grid.backend.blobs()) == 2
    data = pattern(size, 5)
    await grid.call_all([(digest_of, data), (digest_of, data)])
    assert len(await grid.backend.blobs()) == 3


async def test_a_blob_goes_after_the_records_that_hold_it(grid: girder.Grid) -> None:
    """An uncached result's record goes at once: its blob lives out its grace, then a sweep
    deletes it. A cached one stays while its record does."""
    size = 2 * MIB
    assert await grid.call(big_uncached, size, 1) == pattern(size, 1)
    assert await grid.call(big, size, 2) == pattern(size, 2)
    assert len(await grid.backend.blobs()) == 2
    await grid.backend.sweep_blobs(0)
    [left] = await grid.backend.blobs()
    assert (await grid.call(big, size, 2)) == pattern(size, 2)
    assert await grid.backend.get_blob(left) is not None


async def test_an_argument_blob_goes_once_its_request_is_done(grid: girder.Grid) -> None:
    """A done record keeps no payload: its large arguments are swept while its (small) result
    stays cached."""
    data = pattern(2 * MIB, 8)
    assert await grid.call(digest_of, data) == hashlib.sha256(data).hexdigest()
    assert len(await grid.backend.blobs()) == 1

    async def swept() -> bool:  # on Redis, a blob checked is due again the next millisecond
        await grid.backend.sweep_blobs(0)
        return await grid.backend.blobs() == {}

    await wait_until(swept, what="the argument blob swept")
    key = girder.Request(digest_of, data).key
    assert await grid.backend.state(key) == RequestState.DONE
    assert await grid.call(digest_of, data) == hashlib.sha256(data).hexdigest()


async def test_a_tampered_blob_is_refused_and_harms_nothing_else(
    grid: girder.Grid, backend_url: str | None
) -> None:
    size = 2 * MIB
    assert await grid.call(big, size, 1) == pattern(size, 1)
    [digest] = await grid.backend.blobs()
    forged = pattern(size, 2)
    await _overwrite_blob(grid.backend, backend_url, digest, forged)
    with pytest.raises(girder.RequestError, match="do not match its digest") as caught:
        await grid.call(big, size, 1)
    assert caught.value.kind == "invalid"
    assert await grid.call(big, size, 3) == pattern(size, 3)
    assert await grid.call(big, 10, 1) == pattern(10, 1)


async def test_a_cached_value_whose_blob_was_lost_is_computed_again(
    grid: girder.Grid, backend_url: str | None
) -> None:
    """A failover that lost writes can lose a blob's bytes while the record that names it
    stays: the caller forgets the cached outcome and the request is computed again."""
    size = 2 * MIB
    assert await grid.call(big, size, 21) == pattern(size, 21)
    [digest] = await grid.backend.blobs()
    await _lose_blob(grid.backend, backend_url, digest)
    assert await grid.call(big, size, 21) == pattern(size, 21)
    assert await grid.backend.get_blob(digest) is not None


async def test_a_sub_requests_value_whose_blob_was_lost_is_computed_again(
    grid: girder.Grid, backend_url: str | None
) -> None:
    """The same inside a worker: a parent whose child's cached value lost its bytes gets the
    value computed again, not an error."""
    size = 2 * MIB
    assert await grid.call(big, size, 22) == pattern(size, 22)
    [digest] = await grid.backend.blobs()
    await _lose_blob(grid.backend, backend_url, digest)
    assert await grid.call(length_of_big, size, 22) == size
    assert await grid.backend.get_blob(digest) is not None


async def _lose_blob(backend: StateBackend, url: str | None, digest: str) -> None:
    """What a failover that lost writes does to a blob: its bytes are gone, its records stay."""
    await _overwrite_blob(backend, url, digest, None)


async def _overwrite_blob(
    backend: StateBackend, url: str | None, digest: str, data: bytes | None
) -> None:
    """What someone who can write to the backend could do to a stored blob (None: delete
    its bytes)."""
    if isinstance(backend, MemoryBackend):
        if data is None:
            del backend._blobs[digest]
        else:
            backend._blobs[digest].data = data
        return
    assert isinstance(backend, RedisBackend)
    assert url is not None
    raw = aioredis.Redis.from_url(url)
    try:
        name = f"{{{girder.config.Settings().key_prefix}/{digest}}}:blob"
        if data is None:
            assert await raw.delete(name) == 1
        else:
            assert await raw.set(name, data, xx=True)
    finally:
        await raw.aclose()


class _CountingMemory(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []

    async def get_blob(self, digest: str) -> bytes | None:
        self.fetched.append(digest)
        return await super().get_blob(digest)


async def test_only_who_needs_a_value_fetches_it() -> None:
    """The worker that computed a value hands it to its parent in memory; a client that gets
    only the parent's small value fetches nothing; one that asks for the large value does."""
    backend = _CountingMemory()
    settings = girder.config.load_settings(workers=1)
    grid = girder.Grid(settings, local_workers=1, backend=backend)
    async with grid:
        assert await grid.call(length_of_big, 2 * MIB, 1) == 2 * MIB
        assert backend.fetched == []
        assert await grid.call(big, 2 * MIB, 1) == pattern(2 * MIB, 1)
        assert len(backend.fetched) == 1


class _LosesOnce(MemoryBackend):
    """A backend that loses the bytes of each blob when it is first read (as a failover that
    lost writes would), and keeps them once they are put again."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[str] = []

    async def get_blob(self, digest: str) -> bytes | None:
        if digest not in self.lost:
            self.lost.append(digest)
            self._blobs.pop(digest, None)
        return await super().get_blob(digest)


async def test_a_sub_request_whose_argument_blob_was_lost_is_submitted_again() -> None:
    """Inside a worker: the child's large arguments are gone when the worker fetches them; it
    leaves the child to its parent, which puts them again and submits it again."""
    backend = _LosesOnce()
    grid = girder.Grid(girder.config.load_settings(workers=1), local_workers=1, backend=backend)
    async with grid:
        data = pattern(2 * MIB, 24)
        digest = await grid.call(digest_through_a_child, 2 * MIB, 24)
        assert digest == hashlib.sha256(data).hexdigest()
        assert len(backend.lost) == 1


async def test_a_stream_whose_answers_lost_their_bytes_ends_with_its_last_answer() -> None:
    """A partial answer whose bytes are gone is skipped (as a reader that joins late misses
    earlier ones); a final one is streamed again: every reader ends with the last answer,
    after a few answers in order. (Inside a worker, `girder.stream` reads through the same
    `Node.answers`; in one process a worker hands its answers over in memory, unread.)"""
    size, count = 2 * MIB, 3
    backend = _LosesOnce()
    grid = girder.Grid(girder.config.load_settings(workers=1), local_workers=1, backend=backend)
    async with grid:
        answers = [answer async for answer in grid.stream(big_answers, size, count)]
        seeds = [next(i for i in range(1, count + 1) if a == pattern(size, i)) for a in answers]
        assert seeds[-1] == count
        assert seeds == sorted(set(seeds))
        assert len(backend.lost) == count  # the bytes of every answer were lost once


class _Forgetful(MemoryBackend):
    """A backend that loses every blob's bytes as soon as they are stored; counts the puts."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def get_blob(self, digest: str) -> bytes | None:
        return None

    async def put_blob(self, digest: str, data: bytes, **options: Any) -> None:
        self.puts += 1
        await super().put_blob(digest, data, **options)


async def test_a_backend_that_keeps_losing_bytes_fails_the_request_as_lost() -> None:
    """Bytes lost again and again are not chased forever: the request is computed once and
    submitted again three times, then fails with kind "lost"; small values still work."""
    backend = _Forgetful()
    grid = girder.Grid(girder.config.load_settings(workers=1), local_workers=1, backend=backend)
    async with grid:
        with pytest.raises(girder.RequestError, match="no longer stored") as caught:
            await grid.call(big, 2 * MIB, 23)
        assert caught.value.kind == "lost"
        assert backend.puts == 4  # the value computed and stored once, then three times more
        assert await grid.call(big, 10, 23) == pattern(10, 23)


@pytest.mark.redis
async def test_a_100_mib_value_travels_between_processes(redis_url: str, tmp_path: Path) -> None:
    """A worker process returns 100 MiB; the client receives it intact."""
    size = 100 * MIB
    async with grid_on(redis_url, tmp_path / "logs", workers=1) as (grid, _):
        started = time.perf_counter()
        value = await grid.call(big, size, 9)
        elapsed = time.perf_counter() - started
        assert hashlib.sha256(value).digest() == hashlib.sha256(pattern(size, 9)).digest()
        print(f"100 MiB result between processes: {elapsed:.2f} s")
        await grid.backend.flush()
        assert await grid.backend.blobs() == {}


@pytest.mark.redis
async def test_large_arguments_whose_blob_was_lost_are_put_again(
    redis_url: str, tmp_path: Path
) -> None:
    """The bytes of a queued request's large arguments are lost (its record stays): the worker
    that claims it cannot run it and leaves it to its submitter, which puts them again."""

    async def lose(backend: StateBackend) -> None:
        [digest] = await backend.blobs()
        await _lose_blob(backend, redis_url, digest)

    await _fault_before_a_worker_claims(redis_url, tmp_path, lose)


@pytest.mark.redis
async def test_large_arguments_survive_a_backend_that_lost_its_state(
    redis_url: str, tmp_path: Path
) -> None:
    """The backend forgets everything (a restart without persistence) while a request with
    large arguments waits: the client submits it again, and puts its argument blob again."""
    await _fault_before_a_worker_claims(redis_url, tmp_path, lambda backend: backend.flush())


async def _fault_before_a_worker_claims(
    redis_url: str, tmp_path: Path, fault: Callable[[StateBackend], Awaitable[None]]
) -> None:
    """A request with large arguments is queued (no worker yet); `fault` strikes the backend;
    then a worker starts, and the request must still get its right value."""
    procs = GridProcesses(redis_url, tmp_path / "logs")
    try:
        procs.distributor()
        await wait_for_nodes(redis_url, workers=0)
        async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as grid:
            data = pattern(3 * MIB, 11)
            handle = grid.submit(digest_of, data)

            async def stored() -> bool:
                return len(await grid.backend.blobs()) == 1

            await wait_until(stored, what="the argument blob")
            await fault(grid.backend)
            procs.worker("w1")
            assert await asyncio.wait_for(handle, 60) == hashlib.sha256(data).hexdigest()
    finally:
        procs.stop_all()
