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
