"""The small Redis client's URL forms, and its behaviour against a real server, directly and
through a `FaultProxy` that loses replies, cuts connections and slows the server down."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from girder.backends.resp import (
    ConnectionLost,
    NotSent,
    RedisClient,
    ReplyError,
    ReplyLost,
    ServerAddress,
    parse_url,
)
from girder.testing.proxy import FaultProxy
from girder.testing.redis_server import RedisServer

INCR_SCRIPT = "return redis.call('INCR', KEYS[1])"
"""A script that must not run twice, like `claim`."""


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
        ("rediss://h/0?ssl_cert_reqs=optional", "ssl_cert_reqs must be 'required' or 'none'"),
        ("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem", "cannot load ssl_ca_certs"),
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
async def test_an_empty_pipeline_answers_at_once(redis_url: str) -> None:
    """No commands, no replies: an empty pipeline once waited for a reply that never came, till
    the command timeout aborted the connection (and a caller that retries lost replies
    waited for ever)."""
    client = RedisClient(parse_url(redis_url), timeout=30)
    try:
        assert await asyncio.wait_for(client.pipeline([]), 5) == []
        assert await client.execute("PING") == b"PONG"
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


@pytest.fixture
async def through(fault_proxy: FaultProxy) -> AsyncIterator[RedisClient]:
    """A client connected through the proxy, with its shared connection open (so the proxy's
    next command is the test's, not the handshake's)."""
    client = RedisClient(parse_url(fault_proxy.url), timeout=0.5)
    assert await client.execute("PING") == b"PONG"
    yield client
    client.close()


async def wait_until_blocked(raw: aioredis.Redis) -> None:
    """Until the server holds a blocking command."""
    for _ in range(500):
        if (await raw.info("clients"))["blocked_clients"]:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the server never held the blocking command")


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_a_lost_reply_raises_reply_lost_and_the_script_is_not_run_again(
    fault_proxy: FaultProxy, through: RedisClient, raw: aioredis.Redis
) -> None:
    fault_proxy.drop_next_reply()
    with pytest.raises(ReplyLost):
        await through.execute("EVAL", INCR_SCRIPT, 1, "counter")
    assert await raw.get("counter") == b"1"  # it ran, once
    assert fault_proxy.replies_dropped == 1
    assert await through.execute("EVAL", INCR_SCRIPT, 1, "counter") == 2  # on a new connection


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_every_command_in_flight_on_a_cut_connection_gets_reply_lost(
    fault_proxy: FaultProxy, through: RedisClient, raw: aioredis.Redis
) -> None:
    fault_proxy.drop_next_reply()
    outcomes = await asyncio.gather(
        *(through.execute("INCR", "counter") for _ in range(20)), return_exceptions=True
    )
    lost = [outcome for outcome in outcomes if isinstance(outcome, ReplyLost)]
    assert lost  # the first, and any written after it
    ran = int(await raw.get("counter") or 0)
    assert 20 - len(lost) <= ran <= 20  # none ran twice


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_a_command_whose_connection_broke_before_the_write_is_sent_once(
    fault_proxy: FaultProxy, raw: aioredis.Redis
) -> None:
    client = RedisClient(parse_url(fault_proxy.url))
    try:
        fault_proxy.cut_before_next_command()  # the new connection's PING: it breaks opening
        assert await client.execute("EVAL", INCR_SCRIPT, 1, "counter") == 1
        assert await raw.get("counter") == b"1"
        assert fault_proxy.connections_cut == 1
        assert fault_proxy.commands_named("EVAL") == 1
        assert fault_proxy.commands_named("PING") >= 2  # the one cut, the next connection's
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_overdue_replies_fail_their_commands_and_the_client_recovers(
    fault_proxy: FaultProxy,
) -> None:
    client = RedisClient(parse_url(fault_proxy.url), timeout=0.3)
    try:
        assert await client.execute("PING") == b"PONG"
        fault_proxy.delay(2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await asyncio.gather(
            *(client.execute("PING") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(outcome, ReplyLost) for outcome in outcomes)
        assert 0.3 <= loop.time() - started < 1.5
        fault_proxy.delay(0)
        assert await client.execute("PING") == b"PONG"
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_an_outage_fails_commands_with_not_sent_until_it_ends(
    fault_proxy: FaultProxy,
) -> None:
    client = RedisClient(parse_url(fault_proxy.url), retries=2)
    try:
        fault_proxy.refuse(True)
        with pytest.raises(NotSent):
            await client.execute("PING")
        assert fault_proxy.connections_cut == 3  # the first try and two more
        with pytest.raises(NotSent):
            await client.blocking([("BLPOP", "nothing", 1)], timeout=1)
        fault_proxy.refuse(False)
        assert await client.execute("PING") == b"PONG"
        assert await client.blocking([("BLPOP", "nothing", 0.01)], timeout=0.01) == [None]
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_a_blocking_wait_whose_connection_is_cut_raises_reply_lost(
    fault_proxy: FaultProxy, through: RedisClient, raw: aioredis.Redis
) -> None:
    waiting = asyncio.create_task(through.blocking([("BLPOP", "nothing", 30)], timeout=30))
    await wait_until_blocked(raw)
    fault_proxy.cut_all()
    with pytest.raises(ReplyLost):
        await waiting
    assert not through._idle  # the broken connection is not kept
    await raw.rpush("list", "x")
    assert await through.blocking([("BLPOP", "list", 5)], timeout=5) == [[b"list", b"x"]]


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_a_blocking_wait_may_take_its_own_timeout_and_the_client_s_but_no_more(
    fault_proxy: FaultProxy, through: RedisClient
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Blocks longer than the client's timeout (0.5 s): no harm, it said so.
    assert await through.blocking([("BLPOP", "nothing", 0.7)], timeout=0.7) == [None]
    assert loop.time() - started >= 0.65  # the server counts in milliseconds
    fault_proxy.delay(5)
    started = loop.time()
    with pytest.raises(ReplyLost, match="in time"):
        await through.blocking([("BLPOP", "nothing", 0.1)], timeout=0.1)
    assert 0.6 <= loop.time() - started < 2


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_tcp_connections_are_kept_alive(redis_url: str) -> None:
    client = RedisClient(parse_url(redis_url))
    try:
        await client.execute("PING")
        assert client._shared is not None
        sock = client._shared._protocol._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.timeout(10)
async def test_the_proxy_passes_pipelined_commands_and_replies_whole_and_in_order(
    fault_proxy: FaultProxy,
) -> None:
    fault_proxy.chaos(1, p_delay=1.0, max_delay=0.005)  # every reply held a little
    client = RedisClient(parse_url(fault_proxy.url))
    try:
        replies = await asyncio.gather(*(client.execute("ECHO", f"{i}\r\n") for i in range(200)))
        assert replies == [f"{i}\r\n".encode() for i in range(200)]
        assert fault_proxy.commands_named("ECHO") == 200
    finally:
        client.close()


async def chaos_run(server: RedisServer, key: str) -> tuple[list[object], tuple[int, int, int]]:
    """Sixty scripts, one at a time, through a proxy of seeded chaos: what each one gave, and
    the proxy's counters."""
    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.chaos(7, p_drop=0.1, p_cut=0.1, p_delay=0.2, max_delay=0.005)
        client = RedisClient(parse_url(proxy.url), retries=5)
        outcomes: list[object] = []
        try:
            for _ in range(60):
                try:
                    outcomes.append(await client.execute("EVAL", INCR_SCRIPT, 1, key))
                except ConnectionLost as exc:
                    outcomes.append(type(exc))
        finally:
            client.close()
        return outcomes, (proxy.commands, proxy.replies_dropped, proxy.connections_cut)


@pytest.mark.redis
@pytest.mark.timeout(20)
async def test_seeded_chaos_replays_the_same_faults(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    first, counters = await chaos_run(redis_server, "first")
    again, counters_again = await chaos_run(redis_server, "again")
    assert (first, counters) == (again, counters_again)
    _, dropped, cut = counters
    assert dropped
    assert cut
    answered = [outcome for outcome in first if isinstance(outcome, int)]
    lost = first.count(ReplyLost)
    ran = int(await raw.get("first") or 0)
    assert len(answered) <= ran <= len(answered) + lost  # none ran twice
