"""Shared test set-up: the test grid functions are importable as `gridfns`, and every grid of the
session (and every process it starts) signs with a test secret, as a real grid must on Redis.
The tests of the refusal without a secret clear it themselves.

Fixtures: `marks`, a folder where grid functions leave marks (started, stopped, ran) that tests
count; `backend_url`, run once on memory (None) and once on the session's Redis."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

TEST_SECRET = "girder test session secret"
os.environ.setdefault("GIRDER_SECRET", TEST_SECRET)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the test server, to look at and tamper with what the backend wrote."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    directory = tmp_path / "marks"
    directory.mkdir()
    return directory


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for a grid in this process on memory; the session's Redis URL for worker processes
    (see `processes.grid_on`)."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url
