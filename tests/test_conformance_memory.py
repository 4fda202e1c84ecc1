"""The backend conformance suite on `MemoryBackend`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from girder.backends.base import StateBackend
from girder.backends.memory import MemoryBackend
from girder.testing.conformance import BackendConformance


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    async def backend(self) -> AsyncIterator[StateBackend]:
        backend = MemoryBackend()
        await backend.connect()
        yield backend
        await backend.close()

    @pytest.mark.xfail(
        strict=True,
        reason="MemoryBackend.complete deletes only the edges from the key (key -> x), not those "
        "into it (x -> key), so a waiter that got the outcome still 'waits' for it and a later "
        "run of the key that waits for that waiter is reported as a cycle",
    )
    async def test_complete_drops_the_wait_edges_into_the_key(self, backend: StateBackend) -> None:
        await super().test_complete_drops_the_wait_edges_into_the_key(backend)
