"""`RedisSentinelGroup`: a throw-away primary, replica and Sentinel for tests.

A primary and a replica (`--replicaof` it) are `RedisServer`s on free loopback ports; the
sentinel is `redis-server <config> --sentinel` (no extra package), with a config file in its own
temporary directory monitoring the primary as service `service` with a quorum of 1, and short
timeouts (`down-after-milliseconds` 1000), so that `fail_over()` (SIGKILL of the primary, then
waiting until the sentinel names the replica and the replica says it is a primary) takes a few
seconds. `heal()` starts a killed server again as a replica of the current primary. `stop()`
leaves no process and no file behind. With `tls=` (certificates from `girder.testing.tls`) the
servers and the sentinel speak only TLS, to clients and to each other (`tls-replication yes`,
which makes the sentinel monitor them over TLS and name their TLS ports), and `url` is a
`rediss+sentinel://` URL that trusts the test CA. Like `redis_server`, only the standard library
is used.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from girder.testing.redis_server import (
    RedisServer,
    Reply,
    find_redis_server,
    free_port,
    roundtrip,
    wait_replicated,
)
from girder.testing.started import Started
from girder.testing.tethered import tethered_popen
from girder.testing.tls import Certificates

_DOWN_AFTER_MS = 1000


class _Sentinel:
    """One `redis-server --sentinel` process."""

    def __init__(
        self, binary: str, service: str, primary_port: int, tls: Certificates | None
    ) -> None:
        self.port = free_port()
        self._tls = tls.client_context() if tls is not None else None
        self._dir = Path(tempfile.mkdtemp(prefix="girder-sentinel-"))
        config = self._dir / "sentinel.conf"
        ports = [f"port {self.port}"]
        if tls is not None:
            ports = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {tls.cert}",
                f"tls-key-file {tls.key}",
                f"tls-ca-cert-file {tls.ca}",
                "tls-auth-clients no",
                "tls-replication yes",
            ]
        config.write_text(
            "\n".join(
                [
                    *ports,
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {self._dir}",
                    f"logfile {self._dir / 'sentinel.log'}",
                    f"sentinel monitor {service} 127.0.0.1 {primary_port} 1",
                    f"sentinel down-after-milliseconds {service} {_DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {service} 5000",
                    f"sentinel parallel-syncs {service} 1",
                    "",
                ]
            )
        )
        self._process = tethered_popen(
            [binary, str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def command(self, *args: str, timeout: float = 5.0) -> Reply:
        return roundtrip(self.port, args, timeout=timeout, tls=self._tls, server="redis-sentinel")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


class RedisSentinelGroup(Started):
    """A primary, a replica and a sentinel watching them as `service`; `start` it, or use it as
    a context."""

    def __init__(
        self, *, service: str = "girder", timeout: float = 30.0, tls: Certificates | None = None
    ) -> None:
        """`tls`: the servers and the sentinel speak only TLS, with these certificates."""
        binary = find_redis_server()
        if binary is None:
            raise FileNotFoundError("no redis-server binary on PATH")
        self.binary = binary
        self.service = service
        self.timeout = timeout
        self.tls = tls
        self.servers: list[RedisServer] = []
        self.sentinel: _Sentinel | None = None
        self._stalled: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The `redis+sentinel://` URL of the service (`rediss+sentinel://`, trusting the test
        CA, with `tls`)."""
        if self.sentinel is None:
            raise RuntimeError("the group is not started")
        where = f"127.0.0.1:{self.sentinel.port}/{self.service}"
        if self.tls is None:
            return f"redis+sentinel://{where}"
        return f"rediss+sentinel://{where}?ssl_ca_certs={quote(str(self.tls.ca))}"

    def start(self) -> None:
        primary = RedisServer(self.binary, options=self._options(None), tls=self.tls)
        self.servers.append(primary)
        primary.start()
        replica = RedisServer(self.binary, options=self._options(primary), tls=self.tls)
        self.servers.append(replica)
        replica.start()
        self._wait(lambda: self._linked(replica), "the replica to sync with the primary")
        self.sentinel = _Sentinel(self.binary, self.service, primary.port, self.tls)
        self._wait(lambda: self._sentinel_knows(replica), "the sentinel to see the replica")

    def primary(self) -> RedisServer:
        """The server the sentinel names as the service's primary."""
        assert self.sentinel is not None
        reply = self.sentinel.command("SENTINEL", "get-master-addr-by-name", self.service)
        assert isinstance(reply, list)
        port = int(str(reply[1]))
        return next(server for server in self.servers if server.port == port)

    def wait_replicated(self) -> None:
        """Wait until the running replica holds every write the primary has made so far."""
        primary = self.primary()
        wait_replicated(
            primary, [server for server in self.servers if server is not primary and server.running]
        )

    def stall_replication(self, backlog: int = 32 << 20) -> None:
        """Make the writes the primary acknowledges from now on unreplicated, so that
        `fail_over` loses them (as asynchronous replication may): the replica is stopped
        (SIGSTOP) and `backlog` bytes of filler fill its link first. `fail_over` resumes it."""
        primary = self.primary()
        for server in self.servers:
            if server is not primary and server.running:
                server.pause()
                self._stalled.append(server)
        primary.command("SET", "girder-filler", "x" * backlog)

    def fail_over(self) -> RedisServer:
        """SIGKILL the primary (then resume the replica `stall_replication` stopped); return
        the replica once the sentinel has promoted it."""
        old = self.primary()
        old.kill()
        while self._stalled:
            self._stalled.pop().resume()
        new = next(server for server in self.servers if server is not old)

        def promoted() -> bool:
            return self.primary() is new and _role(new) == "master"

        self._wait(promoted, "the sentinel to promote the replica")
        return new

    def heal(self) -> None:
        """Start every killed server again as a replica of the current primary."""
        primary = self.primary()
        for server in self.servers:
            if not server.running:
                server.options = self._options(primary)
                server.start()
                self._wait(functools.partial(self._linked, server), "a replica to sync")

    def flush(self) -> None:
        """Delete every key, on the primary (the replica follows)."""
        self.primary().command("FLUSHALL")

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
            self.sentinel = None
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def _options(self, primary: RedisServer | None) -> tuple[str, ...]:
        """A server's options: replicating `primary` (over TLS with `tls`), if any."""
        tls = () if self.tls is None else ("--tls-replication", "yes")
        replica_of = () if primary is None else ("--replicaof", "127.0.0.1", str(primary.port))
        return (*tls, *replica_of)

    def _linked(self, replica: RedisServer) -> bool:
        try:
            return replica.info("replication").get("master_link_status") == "up"
        except (OSError, RuntimeError):
            return False

    def _sentinel_knows(self, replica: RedisServer) -> bool:
        assert self.sentinel is not None
        try:
            replicas = self.sentinel.command("SENTINEL", "replicas", self.service)
        except (OSError, RuntimeError):
            return False
        return isinstance(replicas, list) and any(
            isinstance(entry, list) and str(replica.port) in entry for entry in replicas
        )

    def _wait(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {self.timeout} s waiting for {what}")
            time.sleep(0.05)


def _role(server: RedisServer) -> str | None:
    try:
        reply = server.command("ROLE")
    except (OSError, RuntimeError):
        return None
    return str(reply[0]) if isinstance(reply, list) and reply else None
