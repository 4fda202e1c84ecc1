"""pytest plugin (entry point `girder`): fixtures for testing code that uses girder.

- `redis_server` (session): a private `RedisServer` on a free loopback port; the tests that use
  it are skipped when no `redis-server` binary is on PATH. The system server is never touched.
- `redis_url` (function): the URL of that server, flushed (and restarted if a test killed it)
  before each test.
- `fault_proxy` (function): a `FaultProxy` in front of that server (flushed as for `redis_url`),
  to lose replies, cut connections or slow the server down on command.
- `persistent_redis` (function): a `RedisServer` of the test alone, with an append-only file, so
  that `restart()` keeps the data (for recovery and chaos tests).
- `tls_certificates` (session): a throw-away CA and a server certificate for 127.0.0.1 and
  localhost (`girder.testing.tls`); skipped without the `openssl` binary.
- `tls_redis_server` (session): a `RedisServer` that speaks only TLS with those certificates;
  skipped when `redis-server` was built without TLS.
- `tls_redis_url` (function): its `rediss://` URL (trusting the test CA), flushed (and
  restarted if a test killed it) before each test.
- `redis_cluster` (session): a `RedisClusterServers`, 3 primaries and 3 replicas; skipped without
  the `redis-server` and `redis-cli` binaries.
- `redis_cluster_url` (function): its `redis+cluster://` URL, healed (if a test killed a node) and
  flushed before each test.
- `tls_redis_cluster` (session): the same cluster, every node speaking only TLS (clients,
  cluster bus, replication) with the `tls_certificates`; skipped as `redis_cluster` is, and when
  `redis-server` was built without TLS.
- `tls_redis_cluster_url` (function): its `rediss+cluster://` URL (trusting the test CA), healed
  and flushed before each test.
- `redis_sentinel` (session): a `RedisSentinelGroup`, a primary, a replica and a sentinel
  (`redis-server --sentinel`); skipped without the `redis-server` binary.
- `redis_sentinel_url` (function): its `redis+sentinel://` URL, healed (if a test killed a
  server) and flushed before each test.
- `tls_redis_sentinel` (session) and `tls_redis_sentinel_url` (function): the same, every
  process speaking only TLS with the `tls_certificates` (`rediss+sentinel://`, trusting the test
  CA); skipped as `redis_sentinel` is, and when `redis-server` was built without TLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import pytest

from girder.testing.proxy import FaultProxy
from girder.testing.redis_cluster import RedisClusterServers, find_redis_cli
from girder.testing.redis_sentinel import RedisSentinelGroup
from girder.testing.redis_server import RedisServer, TlsUnsupported, find_redis_server
from girder.testing.tls import Certificates, find_openssl, make_certificates

T = TypeVar("T")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A `redis-server` of this test session (skips the test without the binary)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary on PATH (install Redis to run these tests)")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """`redis://` URL of the session's server, with no data in it."""
    if not redis_server.running:
        redis_server.start()
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture
def fault_proxy(redis_url: str, redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A `FaultProxy` to the session's server, which has no data in it; `.url` is its URL."""
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A `redis-server` of this test alone, with an append-only file (`appendfsync always`):
    `restart()` keeps the data (skips the test without the binary)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary on PATH (install Redis to run these tests)")
    with RedisServer(binary, appendfsync="always") as server:
        yield server


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA and a server certificate for 127.0.0.1/localhost (skips the test without the
    `openssl` binary)."""
    if find_openssl() is None:
        pytest.skip("no openssl binary on PATH (install openssl to run the TLS tests)")
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_redis_server(tls_certificates: Certificates) -> Iterator[RedisServer]:
    """A `redis-server` of this test session that speaks only TLS (skips the test without the
    binary, or when it was built without TLS)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary on PATH (install Redis to run these tests)")
    with _skipped_without_tls(RedisServer(binary, tls=tls_certificates)) as server:
        yield server


@pytest.fixture
def tls_redis_url(tls_redis_server: RedisServer) -> str:
    """`rediss://` URL of the session's TLS server (trusting the test CA), with no data in it."""
    if not tls_redis_server.running:
        tls_redis_server.start()
    tls_redis_server.command("FLUSHALL")
    return tls_redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test session: 3 primaries, 3 replicas (skips the test without
    the binaries)."""
    if find_redis_server() is None or find_redis_cli() is None:
        pytest.skip("no redis-server or redis-cli on PATH (install Redis to run these tests)")
    with RedisClusterServers() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """`redis+cluster://` URL of the session's cluster, whole again and with no data in it."""
    redis_cluster.heal()
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def tls_redis_cluster(tls_certificates: Certificates) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test session that speaks only TLS: 3 primaries, 3 replicas
    (skips the test without the binaries, or when they were built without TLS)."""
    if find_redis_server() is None or find_redis_cli() is None:
        pytest.skip("no redis-server or redis-cli on PATH (install Redis to run these tests)")
    with _skipped_without_tls(RedisClusterServers(tls=tls_certificates)) as cluster:
        yield cluster


@pytest.fixture
def tls_redis_cluster_url(tls_redis_cluster: RedisClusterServers) -> str:
    """`rediss+cluster://` URL of the session's TLS cluster, whole again and with no data."""
    tls_redis_cluster.heal()
    tls_redis_cluster.flush()
    return tls_redis_cluster.url


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelGroup]:
    """A primary, a replica and a sentinel of this test session (skips the test without the
    `redis-server` binary)."""
    if find_redis_server() is None:
        pytest.skip("no redis-server binary on PATH (install Redis to run these tests)")
    with RedisSentinelGroup() as group:
        yield group


@pytest.fixture
def redis_sentinel_url(redis_sentinel: RedisSentinelGroup) -> str:
    """`redis+sentinel://` URL of the session's sentinel group, whole again and empty."""
    redis_sentinel.heal()
    redis_sentinel.flush()
    return redis_sentinel.url


@pytest.fixture(scope="session")
def tls_redis_sentinel(tls_certificates: Certificates) -> Iterator[RedisSentinelGroup]:
    """A primary, a replica and a sentinel of this test session that speak only TLS (skips the
    test without the `redis-server` binary, or when it was built without TLS)."""
    if find_redis_server() is None:
        pytest.skip("no redis-server binary on PATH (install Redis to run these tests)")
    with _skipped_without_tls(RedisSentinelGroup(tls=tls_certificates)) as group:
        yield group


@pytest.fixture
def tls_redis_sentinel_url(tls_redis_sentinel: RedisSentinelGroup) -> str:
    """`rediss+sentinel://` URL of the session's TLS sentinel group, whole again and empty."""
    tls_redis_sentinel.heal()
    tls_redis_sentinel.flush()
    return tls_redis_sentinel.url


@contextmanager
def _skipped_without_tls(servers: AbstractContextManager[T]) -> Iterator[T]:
    """Start `servers`; skip the test when `redis-server` was built without TLS."""
    try:
        with servers as started:
            yield started
    except TlsUnsupported as exc:
        pytest.skip(f"redis-server cannot serve TLS ({exc})")
