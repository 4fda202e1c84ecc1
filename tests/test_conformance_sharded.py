"""The backend conformance suite on `ShardedRedisBackend` (`Settings.layout = "sharded"`): each
request's record in the slot of its own key. On one server, and on a real Redis Cluster (3
primaries, 3 replicas) where the records spread over every primary."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from backends import lose_every_reply_once

from girder.backends import open_backend
from girder.backends.base import StateBackend
from girder.backends.sharded import ShardedRedisBackend
from girder.config import Settings
from girder.testing.conformance import BackendConformance

pytestmark = [pytest.mark.redis]

PREFIX = "sharded"
EVERY_CLASS_ENV = "GIRDER_SHARDED_EVERY_CLASS"


async def _connected(url: str) -> ShardedRedisBackend:
    backend = open_backend(url, settings=Settings(key_prefix=PREFIX, layout="sharded"))
    assert isinstance(backend, ShardedRedisBackend)
    await backend.connect()
    return backend


class TestShardedBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, redis_url: str) -> AsyncIterator[StateBackend]:
        backend = await _connected(redis_url)
        yield backend
        await backend.close()


@pytest.mark.slow
class TestShardedClusterBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, redis_cluster_url: str) -> AsyncIterator[StateBackend]:
        backend = await _connected(redis_cluster_url)
        yield backend
        await backend.close()


class TestShardedBackendLosingEveryReplyOnce(BackendConformance):
    """The suite again, the reply of every distinct command lost once after the server ran it
    (see the same class in test_conformance_redis.py): every step of every operation, in the
    grid's slot or in a record's, runs twice, and every rule must still hold."""

    @pytest.fixture
    async def backend(
        self, redis_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[StateBackend]:
        seen = lose_every_reply_once(monkeypatch)
        backend = await _connected(redis_url)
        yield backend
        await backend.close()
        assert seen, "no reply was lost"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(EVERY_CLASS_ENV) != "1",
    reason=f"on demand ({EVERY_CLASS_ENV}=1): the one-server class loses the same replies, and "
    "the cluster's redirections are covered by the class above; this one costs CI half a minute",
)
class TestShardedClusterBackendLosingEveryReplyOnce(BackendConformance):
    @pytest.fixture
    async def backend(
        self, redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[StateBackend]:
        seen = lose_every_reply_once(monkeypatch)
        backend = await _connected(redis_cluster_url)
        yield backend
        await backend.close()
        assert seen, "no reply was lost"
