"""A `RedisBackend` connected for the length of a test (`connected`), for the fixtures that
run the suite or a test module with some settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from girder.backends.redis import RedisBackend
from girder.config import Settings


@asynccontextmanager
async def connected(url: str, **settings: Any) -> AsyncIterator[RedisBackend]:
    """A `RedisBackend` of `url` with `Settings(**settings)`, connected, closed at the end."""
    backend = RedisBackend(url, settings=Settings(**settings))
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()
