"""`girder.testing.RedisServer`: restarts with and without the append-only file, pause, info,
and a server that speaks only TLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from girder.testing import redis_server
from girder.testing.redis_server import RedisServer, find_redis_server, free_port, roundtrip
from girder.testing.tls import Certificates

pytestmark = pytest.mark.redis


@pytest.mark.skipif(
    not Path("/proc/sys/net/ipv4/ip_local_port_range").exists(), reason="Linux only"
)
def test_free_ports_are_below_the_range_of_outgoing_connections_and_vary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port of that range may be taken by any connection before the server binds it; and a
    run that seeds `random` the same way for every test must not get the same ports."""
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = []
    for _ in range(20):
        redis_server.random.seed(7)  # as pytest-randomly does before every test
        ports.append(free_port())
    assert all(port < start for port in ports)
    assert len(set(ports)) > 10
    with socket.socket() as taken:  # a port in use is never given
        taken.bind(("127.0.0.1", ports[0]))
        taken.listen()
        monkeypatch.setattr(redis_server._port_picker, "randrange", lambda a, b: ports[0])
        assert free_port() != ports[0]


def test_a_restart_keeps_the_data_with_an_append_only_file(
    persistent_redis: RedisServer,
) -> None:
    persistent_redis.command("RPUSH", "list", "a", "b")
    persistent_redis.restart()
    assert persistent_redis.command("LRANGE", "list", "0", "-1") == ["a", "b"]
    persistent_redis.kill()
    persistent_redis.wipe()
    persistent_redis.start()
    assert persistent_redis.command("DBSIZE") == "0"


def test_a_restart_starts_empty_by_default(redis_server: RedisServer, redis_url: str) -> None:
    redis_server.command("SET", "key", "value")
    redis_server.restart()
    assert redis_server.command("GET", "key") is None


def test_a_paused_server_answers_after_it_resumes(persistent_redis: RedisServer) -> None:
    persistent_redis.pause()
    try:
        with pytest.raises(TimeoutError):
            persistent_redis.command("PING", timeout=0.2)
    finally:
        persistent_redis.resume()
    assert persistent_redis.command("PING") == "PONG"
    assert int(persistent_redis.info("memory")["used_memory"]) > 0
    assert persistent_redis.info("persistence")["aof_enabled"] == "1"


def test_an_error_reply_raises(persistent_redis: RedisServer) -> None:
    with pytest.raises(RuntimeError, match="unknown command"):
        persistent_redis.command("NO-SUCH-COMMAND")


def test_a_tls_server_speaks_only_tls_and_trusts_its_test_ca(
    tls_redis_server: RedisServer, tls_certificates: Certificates, tls_redis_url: str
) -> None:
    port = tls_redis_server.port
    assert tls_redis_url == f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_certificates.ca}"
    assert tls_redis_server.command("PING") == "PONG"  # over TLS
    assert tls_redis_server.command("CONFIG", "GET", "port") == ["port", "0"]  # no plain TCP
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(b"*1\r\n$4\r\nPING\r\n")
        with contextlib.suppress(ConnectionResetError):  # not TLS: the server hangs up
            assert plain.recv(100) == b""
    with pytest.raises(ssl.SSLCertVerificationError):  # a CA it was not signed by
        roundtrip(port, ["PING"], timeout=5, tls=ssl.create_default_context())


_STARTS_A_SERVER = """
import sys, threading, time
from girder.testing.redis_server import RedisServer, find_redis_server
server = RedisServer(find_redis_server())
starter = threading.Thread(target=server.start)  # a thread that ends at once
starter.start()
starter.join()
print(server._process.pid, server.port, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie nobody reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_dies_with_a_test_run_killed_outright() -> None:
    """A test run killed with SIGKILL runs no teardown: its servers must not outlive it, even
    one started from a thread that ended long before."""
    if find_redis_server() is None:
        pytest.skip("no redis-server binary on PATH")
    with subprocess.Popen(
        [sys.executable, "-c", _STARTS_A_SERVER], stdout=subprocess.PIPE, text=True
    ) as run:
        try:
            assert run.stdout is not None
            pid, port = map(int, run.stdout.readline().split())
            assert roundtrip(port, ("PING",), timeout=5, tls=None) == "PONG"  # outlived its thread
        finally:
            run.kill()
    deadline = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < deadline, "the server outlived the run that started it"
        time.sleep(0.01)
