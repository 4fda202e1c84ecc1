"""girder over TLS to a real `redis-server` that speaks only TLS (`rediss://`), with a throw-away
CA (`girder.testing.tls`): the conformance suite, a grid of worker processes, and the errors
of a certificate that cannot be verified."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from gridfns import add, fib
from processes import grid_on

from girder.backends import open_backend
from girder.backends.base import Claimed, StateBackend
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.errors import BackendError, ConfigurationError
from girder.testing.conformance import BackendConformance, new, put
from girder.testing.redis_server import RedisServer
from girder.testing.tls import Certificates

pytestmark = pytest.mark.redis

PREFIX = "conformance"


class TestTlsRedisBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, tls_redis_url: str) -> AsyncIterator[StateBackend]:
        backend = open_backend(tls_redis_url, settings=Settings(key_prefix=PREFIX))
        assert isinstance(backend, RedisBackend)
        await backend.connect()
        yield backend
        await backend.close()


async def test_the_server_speaks_only_tls(
    tls_redis_server: RedisServer, tls_redis_url: str
) -> None:
    """What the other tests ran went through TLS: a plain connection gets nowhere."""
    assert tls_redis_url.startswith(f"rediss://127.0.0.1:{tls_redis_server.port}/0?ssl_ca_certs=")
    plain = RedisBackend(f"redis://127.0.0.1:{tls_redis_server.port}/0")
    with pytest.raises(BackendError, match=r"connect failed.*speaks only TLS, use rediss://"):
        await asyncio.wait_for(plain.connect(), 10)
    await plain.close()


async def test_a_certificate_that_cannot_be_verified_says_so_and_where(
    tls_redis_server: RedisServer, tls_redis_url: str
) -> None:
    """Without the test CA (the system's CAs do not know it) connecting fails at once, naming
    the URL, the server and the remedy, rather than hanging or showing an ssl traceback."""
    url = f"rediss://127.0.0.1:{tls_redis_server.port}/0"
    backend = RedisBackend(url)
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(backend.connect(), 10)
    await backend.close()
    message = str(caught.value)
    assert f"at {url}:" in message
    where = f"127.0.0.1:{tls_redis_server.port}"
    assert f"the TLS certificate of {where} could not be verified" in message
    assert "ssl_ca_certs" in message


async def test_no_verification_connects(tls_redis_server: RedisServer, tls_redis_url: str) -> None:
    await _serves(f"rediss://127.0.0.1:{tls_redis_server.port}/0?ssl_cert_reqs=none")


@pytest.mark.timeout(60)
async def test_worker_processes_over_tls(tls_redis_url: str, tmp_path: Path) -> None:
    """`girder distributor` and `girder worker` processes and a client, all on `rediss://`."""
    async with grid_on(tls_redis_url, tmp_path, workers=1) as (grid, _):
        assert await asyncio.wait_for(grid.call(fib, 30), 30) == 832040
        assert await grid.call_all([(add, i, 1) for i in range(20)]) == list(range(1, 21))


async def test_a_server_that_asks_for_client_certificates(
    tls_certificates: Certificates, tls_redis_server: RedisServer
) -> None:
    """Mutual TLS (`--tls-auth-clients yes`): without a client certificate the handshake fails
    with a clear error; with `ssl_certfile` and `ssl_keyfile` the grid works."""
    options = ("--tls-auth-clients", "yes")
    with RedisServer(tls_redis_server.binary, tls=tls_certificates, options=options) as server:
        without = RedisBackend(server.url, settings=Settings(key_prefix=PREFIX))
        with pytest.raises(BackendError, match=r"connect failed.*client certificate"):
            await asyncio.wait_for(without.connect(), 10)
        await without.close()
        cert, key = (quote(str(path)) for path in (tls_certificates.cert, tls_certificates.key))
        await _serves(f"{server.url}&ssl_certfile={cert}&ssl_keyfile={key}")


async def _serves(url: str) -> None:
    """A backend on `url` connects, queues a request and hands it out."""
    backend = RedisBackend(url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    await put(backend, "c", ["k"], into="w")
    assert await backend.claim("w") == Claimed("k", new("k").payload)
    await backend.close()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("ssl_certfile=/nonexistent/c.pem", "cannot load ssl_certfile"),
    ],
)
def test_bad_client_certificate_options_are_url_errors(query: str, error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        RedisBackend(f"rediss://127.0.0.1:1/0?{query}")
