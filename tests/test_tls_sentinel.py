"""girder behind Redis Sentinel over TLS (`rediss+sentinel://`): a primary, a replica and a
sentinel that speak only TLS (real processes; the sentinel monitors the servers over TLS, with
`tls-replication yes`). A grid runs, the sentinel names the primary's TLS port, a failover is
followed, and a certificate that cannot be verified says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gridfns import add, fib

import girder
from girder.backends.base import NodeKind
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.errors import BackendError
from girder.testing.conformance import put
from girder.testing.redis_sentinel import RedisSentinelGroup

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "conformance"


@pytest.fixture
async def backend(tls_redis_sentinel_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(tls_redis_sentinel_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    yield backend
    await backend.close()


async def test_a_grid_runs_behind_the_tls_sentinel(
    tls_redis_sentinel: RedisSentinelGroup, tls_redis_sentinel_url: str
) -> None:
    assert tls_redis_sentinel_url.startswith("rediss+sentinel://127.0.0.1:")
    async with girder.Grid.local(workers=2, backend=tls_redis_sentinel_url) as grid:
        assert await asyncio.wait_for(grid.call(fib, 40), 30) == 102334155
        assert await grid.call_all([(add, i, 1) for i in range(20)]) == list(range(1, 21))
    primary = tls_redis_sentinel.primary()  # the port the sentinel names: the TLS one
    assert primary.command("CONFIG", "GET", "port") == ["port", "0"]
    assert int(str(primary.command("DBSIZE"))) > 0


async def test_a_certificate_that_cannot_be_verified_says_so(
    tls_redis_sentinel: RedisSentinelGroup, tls_redis_sentinel_url: str
) -> None:
    assert tls_redis_sentinel.sentinel is not None
    where = f"127.0.0.1:{tls_redis_sentinel.sentinel.port}"
    backend = RedisBackend(f"rediss+sentinel://{where}/{tls_redis_sentinel.service}")
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(backend.connect(), 10)
    await backend.close()
    assert f"the TLS certificate of {where} could not be verified" in str(caught.value)


async def test_work_goes_on_when_the_primary_dies_and_the_sentinel_promotes_the_replica(
    backend: RedisBackend, tls_redis_sentinel: RedisSentinelGroup
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k2", "k1"], into="w")
    old = tls_redis_sentinel.primary()
    await asyncio.to_thread(tls_redis_sentinel.wait_replicated)  # replicated over TLS
    claiming = asyncio.create_task(backend.claim("w"))
    new = await asyncio.to_thread(tls_redis_sentinel.fail_over)
    assert new is not old
    assert await asyncio.wait_for(claiming, 30) is not None
    assert await backend.claim("w") is not None
    assert await backend.claim("w") is None
    assert [info.node for info in await backend.nodes()] == ["w"]
