"""The backend conformance suite on `RedisBackend` behind Redis Sentinel (a primary, a replica
and a sentinel, real processes), and what only Sentinel does: naming the primary, and a new one
after a failover."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from processes import wait_until

from girder.backends import open_backend
from girder.backends.base import Claimed, NodeKind, RequestState, StateBackend
from girder.backends.redis import RedisBackend
from girder.backends.sentinel import parse_sentinel_url
from girder.config import Settings
from girder.errors import BackendError, ConfigurationError
from girder.testing.conformance import BackendConformance, new, out, put
from girder.testing.redis_sentinel import RedisSentinelGroup

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "conformance"


class TestRedisSentinelBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, redis_sentinel_url: str) -> AsyncIterator[StateBackend]:
        backend = open_backend(redis_sentinel_url, settings=Settings(key_prefix=PREFIX))
        assert isinstance(backend, RedisBackend)
        await backend.connect()
        yield backend
        await backend.close()


@pytest.fixture
async def backend(redis_sentinel_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_sentinel_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    yield backend
    await backend.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://",
        "redis+sentinel://host:1",
        "redis+sentinel://host:1/",
        "redis+sentinel://host/service",
        "redis+sentinel://a:1,b/service",
        "redis+sentinel://a:1/service/3",
        "redis+sentinel://a:1/service?db=x",
        "rediss+sentinel://a:1/service?ssl_cert_reqs=maybe",
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong(url: str) -> None:
    with pytest.raises(ConfigurationError, match="bad Redis URL"):
        RedisBackend(url)


def test_a_sentinel_url_names_its_sentinels_service_and_credentials() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://me:s%40cret@10.0.0.1:26379,[::1]:26380/my%20grid"
        "?db=2&sentinel_password=watch"
    )
    assert [(s.host, s.port) for s in target.sentinels] == [("10.0.0.1", 26379), ("::1", 26380)]
    assert {s.password for s in target.sentinels} == {"watch"}
    assert target.service == "my grid"
    assert (target.primary.username, target.primary.password, target.primary.db) == (
        "me",
        "s@cret",
        2,
    )
    assert "secret" not in RedisBackend("redis+sentinel://me:secret@h:1/s").url
    masked = RedisBackend("rediss+sentinel://h:1/s?sentinel_password=secret&db=1").url
    assert masked == "rediss+sentinel://h:1/s?sentinel_password=***&db=1"


def test_a_tls_sentinel_url_talks_tls_to_the_sentinels_and_the_primary() -> None:
    target = parse_sentinel_url("rediss+sentinel://a:1,b:2/s?ssl_cert_reqs=none")
    tls = target.primary.tls
    assert tls is not None
    assert tls.verify_mode == ssl.CERT_NONE
    assert all(sentinel.tls is tls for sentinel in target.sentinels)
    plain = parse_sentinel_url("redis+sentinel://a:1/s")
    assert plain.primary.tls is None
    assert plain.sentinels[0].tls is None
    assert isinstance(open_backend("rediss+sentinel://a:1/s"), RedisBackend)


async def test_the_grid_lives_on_the_primary_the_sentinel_names(
    backend: RedisBackend, redis_sentinel: RedisSentinelGroup
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["a", "b"], into="w")
    primary = redis_sentinel.primary()
    assert int(str(primary.command("DBSIZE"))) > 0
    assert primary.info("replication")["role"] == "master"


async def test_an_unknown_service_is_a_clear_error_at_connect(
    redis_sentinel: RedisSentinelGroup,
) -> None:
    assert redis_sentinel.sentinel is not None
    backend = RedisBackend(f"redis+sentinel://127.0.0.1:{redis_sentinel.sentinel.port}/nobody")
    with pytest.raises(BackendError, match="does not know the service 'nobody'"):
        await asyncio.wait_for(backend.connect(), 30)
    await backend.close()


async def test_work_goes_on_when_the_primary_dies_and_the_sentinel_promotes_the_replica(
    backend: RedisBackend, redis_sentinel: RedisSentinelGroup
) -> None:
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k2", "k1"], into="w")
    old = redis_sentinel.primary()
    await asyncio.to_thread(redis_sentinel.wait_replicated)  # nothing is lost with it
    claiming = asyncio.create_task(backend.claim("w"))
    new = await asyncio.to_thread(redis_sentinel.fail_over)
    assert new is not old
    assert await asyncio.wait_for(claiming, 30) is not None
    assert await backend.claim("w") is not None
    assert await backend.claim("w") is None
    assert [info.node for info in await backend.nodes()] == ["w"]


async def test_completions_lost_in_a_failover_are_seen_and_given_back(
    backend: RedisBackend, redis_sentinel: RedisSentinelGroup
) -> None:
    """Worker "w" heartbeat, then completed its key; worker "v" joined and completed its key
    before its first heartbeat. The replica got neither completion: promoted, it holds both
    keys as running under live workers that are done with them, and the grid's clock cannot
    show it ("w"'s last heartbeat is all there, "v" had none). A heartbeat answered by another
    server than the node's join or previous heartbeat says writes may be lost; the reconcile
    gives the keys back."""
    for worker in ("w", "v"):
        await backend.join(worker, NodeKind.WORKER, None, 60)
        await put(backend, "c", [f"k-{worker}"], into=worker)
        assert await backend.claim(worker) == Claimed(f"k-{worker}", new(f"k-{worker}").payload)
    assert not (await backend.heartbeat("w", 60, {})).lost_writes
    before = await backend.heartbeat("w", 60, {})
    assert not before.lost_writes  # the same server
    await asyncio.to_thread(redis_sentinel.wait_replicated)
    await asyncio.to_thread(redis_sentinel.stall_replication)
    for worker in ("w", "v"):  # acknowledged, never replicated
        await backend.complete(worker, f"k-{worker}", out(f"k-{worker}"), cache=True)
    await asyncio.to_thread(redis_sentinel.fail_over)
    beat = await asyncio.wait_for(backend.heartbeat("w", 60, {}), 30)
    assert beat.registered
    assert beat.clock > before.clock  # the clock cannot tell: it went on,
    assert beat.own == before.clock  # and the worker's last heartbeat is there
    assert beat.lost_writes
    assert (await backend.heartbeat("v", 60, {})).lost_writes
    for worker in ("w", "v"):
        assert not (await backend.heartbeat(worker, 60, {})).lost_writes
        assert await backend.state(f"k-{worker}") == RequestState.RUNNING
        assert await backend.reconcile(worker, []) == 1
        assert await backend.claim(worker) == Claimed(f"k-{worker}", new(f"k-{worker}").payload)


async def test_a_demoted_primary_is_left_for_the_new_one(
    backend: RedisBackend, redis_sentinel: RedisSentinelGroup
) -> None:
    """The primary becomes a replica (as a failed-over primary that comes back does): its
    READONLY replies send the client to the sentinel, which names the new primary."""
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k1"], into="w")
    old = redis_sentinel.primary()
    await asyncio.to_thread(redis_sentinel.wait_replicated)
    assert redis_sentinel.sentinel is not None
    redis_sentinel.sentinel.command("SENTINEL", "failover", redis_sentinel.service)

    async def moved() -> bool:
        return redis_sentinel.primary() is not old

    deadline = asyncio.get_running_loop().time() + 30
    while not await moved():
        assert asyncio.get_running_loop().time() < deadline, "no failover"
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(backend.claim("w"), 30) is not None
    assert redis_sentinel.primary().info("replication")["role"] == "master"


async def test_a_sentinel_reached_through_redis_url_is_refused_with_the_scheme_to_use(
    redis_sentinel: RedisSentinelGroup,
) -> None:
    sentinel = redis_sentinel.url.removeprefix("redis+sentinel://").split("/")[0]
    plain = RedisBackend(f"redis://{sentinel}/0", settings=Settings(key_prefix=PREFIX))
    with pytest.raises(ConfigurationError, match=r"a Sentinel, not a server.*redis\+sentinel://"):
        await asyncio.wait_for(plain.connect(), 10)
    await plain.close()


async def test_connecting_while_the_primary_fails_over_waits_for_the_replica(
    redis_sentinel: RedisSentinelGroup, redis_sentinel_url: str
) -> None:
    """The sentinel answers, the primary it names is dead: connecting waits for the
    promotion instead of failing as for a wrong URL."""
    old = redis_sentinel.primary()
    failing = asyncio.ensure_future(asyncio.to_thread(redis_sentinel.fail_over))

    async def killed() -> bool:
        return not old.running

    await wait_until(killed, what="the primary killed")
    backend = RedisBackend(redis_sentinel_url, settings=Settings(key_prefix=PREFIX))
    connecting = asyncio.create_task(backend.connect())
    promoted = await asyncio.wait_for(failing, 60)
    await asyncio.wait_for(connecting, 30)
    await backend.join("w", NodeKind.WORKER, None, 60)
    assert redis_sentinel.primary() is promoted
    await backend.close()
