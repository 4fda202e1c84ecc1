"""The backend conformance suite on `MemoryBackend`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from girder.backends.base import NodeKind, StateBackend
from girder.backends.memory import MemoryBackend
from girder.config import Settings
from girder.testing.conformance import BackendConformance, put, watch


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    async def backend(self) -> AsyncIterator[StateBackend]:
        backend = MemoryBackend()
        await backend.connect()
        yield backend
        await backend.close()


async def test_the_event_ring_buffer_is_bounded() -> None:
    backend = MemoryBackend(settings=Settings(events_max=10))
    await watch(backend)
    for index in range(30):
        await put(backend, "c", [f"k{index}"], into="w")
    kept = await backend.events(None, 1000)
    assert [e.key for e in kept] == [f"k{i}" for i in range(20, 30)]
    assert await backend.events("1", 3) == kept[:3]  # a dropped id reads from the oldest kept


async def test_with_events_off_nothing_is_published() -> None:
    backend = MemoryBackend(settings=Settings(events=False))
    await watch(backend)
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k"], into="w")
    assert await backend.events() == []


async def test_events_stop_once_nobody_has_read_them_for_events_watch_seconds() -> None:
    backend = MemoryBackend(settings=Settings(events_watch=0.05))
    await watch(backend)
    await put(backend, "c", ["read"], into="w")
    await asyncio.sleep(0.1)  # the watch lapses: time itself is what is tested
    await put(backend, "c", ["unread"], into="w")
    assert [e.key for e in await backend.events()] == ["read"]
