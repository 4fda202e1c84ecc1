"""The lease keeper thread: it keeps a process's leases alive through backend outages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from processes import nodes

from girder.backends import open_backend
from girder.backends.base import NodeKind
from girder.config import Settings
from girder.scheduler.lease import LeaseKeeper, lease_keeper
from girder.testing.redis_server import RedisServer, find_redis_server

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

TTL = 1.0
"""A lease this short lapses during the test unless the keeper renews it."""


@pytest.fixture
def stopped_server() -> Iterator[RedisServer]:
    """A redis-server that is not running yet (its port is chosen, nothing listens)."""
    if find_redis_server() is None:
        pytest.skip("no redis-server binary on PATH")
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


async def _join(url: str, node: str) -> None:
    backend = open_backend(url)
    await backend.connect()
    try:
        await backend.join(node, NodeKind.WORKER, None, TTL)
    finally:
        await backend.close()


async def _alive(url: str, node: str) -> bool:
    return any(n.node == node and n.alive for n in await nodes(url))


async def test_the_keeper_survives_a_failed_first_connect_and_a_restart(
    stopped_server: RedisServer,
) -> None:
    url = stopped_server.url
    keeper = LeaseKeeper(Settings(backend=url, heartbeat_interval=0.1, heartbeat_ttl=TTL))
    try:
        keeper.add("kept")  # the thread starts; Redis is not there yet
        await asyncio.sleep(0.5)
        for _ in range(2):  # first start, then a restart (Redis loses the lease)
            stopped_server.start()
            await _join(url, "kept")
            await asyncio.sleep(3 * TTL)
            assert await _alive(url, "kept")
            stopped_server.kill()
            await asyncio.sleep(0.5)
    finally:
        keeper.stop()


def test_only_a_shared_backend_needs_a_keeper() -> None:
    settings = Settings(backend="redis://127.0.0.1:1/0")
    assert lease_keeper(settings, shared=False) is None
    assert lease_keeper(settings, shared=True) is lease_keeper(settings, shared=True)
