"""The small Redis client's URL forms, and its behaviour against a real server."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from girder.backends.resp import (
    RedisClient,
    ReplyError,
    ServerAddress,
    parse_url,
)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://localhost", ServerAddress(host="localhost")),
        ("redis://h:7000/3", ServerAddress(host="h", port=7000, db=3)),
        ("redis://:s%40cret@h/0", ServerAddress(host="h", password="s@cret")),
        ("redis://u:p@h:1/2", ServerAddress(host="h", port=1, db=2, username="u", password="p")),
        (
            "redis://h?password=q&username=v&db=5",
            ServerAddress(host="h", db=5, username="v", password="q"),
        ),
        ("unix:///run/redis.sock?db=4", ServerAddress(path="/run/redis.sock", db=4)),
        ("unix://:pw@/tmp/r.sock", ServerAddress(path="/tmp/r.sock", password="pw")),
    ],
)
def test_urls(url: str, address: ServerAddress) -> None:
    assert parse_url(url) == address


def test_a_tls_url_verifies_unless_told_not_to() -> None:
    verified = parse_url("rediss://h:6380/0").tls
    assert verified is not None
    assert verified.verify_mode == ssl.CERT_REQUIRED
    unverified = parse_url("rediss://h:6380/0?ssl_cert_reqs=none").tls
    assert unverified is not None
    assert unverified.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/0", "scheme"),
        ("redis://h/zero", "database"),
        ("redis://h:port/0", "port"),
        ("unix://", "path"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


@pytest.mark.redis
async def test_commands_from_many_tasks_share_one_connection(redis_url: str) -> None:
    client = RedisClient(parse_url(redis_url))
    try:
        replies = await asyncio.gather(*(client.execute("ECHO", str(i)) for i in range(200)))
        assert replies == [str(i).encode() for i in range(200)]
        with pytest.raises(ReplyError, match="unknown command"):
            await client.execute("NO-SUCH-COMMAND")
        assert await client.execute("PING") == b"PONG"  # an error reply harms nothing else
    finally:
        client.close()


@pytest.mark.redis
async def test_a_cancelled_blocking_wait_leaves_the_client_working(redis_url: str) -> None:
    client = RedisClient(parse_url(redis_url))
    try:
        waiting = asyncio.create_task(client.blocking([("BLPOP", "resp-test-nothing", 30)]))
        for _ in range(500):  # until the server holds the wait
            info = await client.execute("INFO", "clients")
            if b"blocked_clients:1" in info:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the BLPOP never blocked")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not client._idle  # the cancelled wait's connection was closed, not reused
        await client.execute("RPUSH", "resp-test-list", "x")
        assert await client.blocking([("BLPOP", "resp-test-list", 5)]) == [
            [b"resp-test-list", b"x"]
        ]
    finally:
        client.close()
