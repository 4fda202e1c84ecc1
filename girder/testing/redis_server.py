"""`RedisServer`: a throw-away `redis-server` process for tests.

It listens on a free loopback port (never the system server's 6379) and on a unix socket in its
own temporary directory, and can be killed (SIGKILL), paused (SIGSTOP/SIGCONT) and restarted on
the same port to test recovery. By default it keeps nothing on disk (`--save "" --appendonly no`),
so a restart starts empty; with `appendfsync="always"` (or "everysec", "no") it keeps an
append-only file in its directory and a restart reloads the data. With `tls=` (certificates from
`girder.testing.tls`) it speaks only TLS on its port (`--port 0 --tls-port ...`; the unix socket
stays plain) and its `url` is a `rediss://` URL that trusts the test CA. Only the standard
library is used, so the pytest plugin can import this module even where the `redis` package is
missing.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal
from urllib.parse import quote

from girder.testing.started import Started
from girder.testing.tethered import tethered_popen
from girder.testing.tls import Certificates

Reply = str | None | list["Reply"]
"""A decoded RESP reply: strings and integers as text, nil as None, arrays as lists."""

AppendFsync = Literal["always", "everysec", "no"]


class TlsUnsupported(RuntimeError):
    """The `redis-server` binary was built without TLS (it rejects `--tls-port`)."""


def find_redis_server() -> str | None:
    """The path of a `redis-server` binary on PATH, or None."""
    return shutil.which("redis-server")


_PORTS_FROM = 12000
"""The lowest port `free_port` picks from."""

_port_picker = random.SystemRandom()
"""Its own source of randomness: a test run may seed the module's (pytest-randomly does, the
same way for every test), and would have every test pick the same ports."""


def _ephemeral_ports_start() -> int:
    """The first port of the range the kernel gives outgoing connections (Linux), or 0."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now, for a server to listen on: on
    Linux, one below the range of the ports the kernel gives outgoing connections, which any
    connection may take between this check and the server's bind (seen: a cluster node that
    could not bind its bus port). It keeps the servers' ports apart from the proxies' too
    (those bind a port of that range themselves), so that a client that keeps dialing a server
    stopped in an earlier test never reaches a proxy of this one."""
    end = _ephemeral_ports_start()
    if end - _PORTS_FROM >= 1000:
        for _ in range(100):
            port = _port_picker.randrange(_PORTS_FROM, end)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


class RedisServer(Started):
    """One `redis-server` process on 127.0.0.1:`port`; `start` it, or use it as a context."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        startup_timeout: float = 10.0,
        appendfsync: AppendFsync | None = None,
        options: Sequence[str] = (),
        tls: Certificates | None = None,
    ) -> None:
        """`appendfsync` turns on the append-only file with that fsync policy (None: no
        persistence, a restart starts empty); `options` go on the command line last (for
        example `("--cluster-enabled", "yes")`); `tls`: serve TLS only, with these
        certificates (clients are not asked for one)."""
        found = binary or find_redis_server()
        if found is None:
            raise FileNotFoundError("no redis-server binary on PATH")
        self.binary = found
        self.startup_timeout = startup_timeout
        self.appendfsync = appendfsync
        self.options = tuple(options)
        self.tls = tls
        self._client_tls = tls.client_context() if tls is not None else None
        self.port = free_port()
        """The port it listens on: plain TCP, or TLS only when `tls` is given."""
        self._dir = Path(tempfile.mkdtemp(prefix="girder-redis-"))
        self.unix_socket = str(self._dir / "redis.sock")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://` URL of database 0 (`rediss://`, trusting the test CA, with `tls`)."""
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca))}"

    @property
    def unix_url(self) -> str:
        """`unix://` URL of database 0."""
        return f"unix://{self.unix_socket}?db=0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def directory(self) -> Path:
        """The server's own temporary directory (its log, socket and data files)."""
        return self._dir

    @property
    def persistent(self) -> bool:
        """Whether a restart keeps the data (append-only file on)."""
        return self.appendfsync is not None

    def _port_options(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert),
            "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def _persistence_options(self) -> list[str]:
        if self.appendfsync is None:
            return ["--appendonly", "no"]
        return ["--appendonly", "yes", "--appendfsync", self.appendfsync]

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        log, errors = self._dir / "redis.log", self._dir / "stderr.log"
        # Never inherit a config file; everything is on the command line.
        with errors.open("wb") as stderr:
            self._process = self._popen(log, stderr)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                output = "".join(
                    path.read_text(errors="replace") for path in (errors, log) if path.exists()
                )
                self._process = None
                if self.tls is not None and "'tls-port" in output:
                    raise TlsUnsupported(f"{self.binary} was built without TLS:\n{output}")
                raise RuntimeError(f"redis-server exited at start-up:\n{output}")
            try:
                if self.command("PING") == "PONG":
                    return
            except (OSError, RuntimeError):  # not listening yet, or LOADING its data
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)

    def _popen(self, log: Path, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start the process (its start-up errors, such as a bad option, go to `stderr`)."""
        return tethered_popen(
            [
                self.binary,
                *self._port_options(),
                "--bind", "127.0.0.1",
                "--unixsocket", self.unix_socket,
                "--unixsocketperm", "700",
                "--save", "",
                *self._persistence_options(),
                "--dir", str(self._dir),
                "--logfile", str(log),
                "--daemonize", "no",
                *self.options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the server (without persistence its state is lost)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        """Kill the server and start it again on the same port and socket (empty, unless
        persistent: then it reloads its append-only file)."""
        self.kill()
        self.start()

    def wipe(self) -> None:
        """Delete the data files of a stopped server: the next start is empty even when
        persistent (a server that lost its disk, or was restored from nothing)."""
        if self.running:
            raise RuntimeError("wipe() needs the server stopped (kill() it first)")
        shutil.rmtree(self._dir / "appendonlydir", ignore_errors=True)
        for name in ("dump.rdb", "appendonly.aof"):
            (self._dir / name).unlink(missing_ok=True)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("redis-server is not running")
        os.kill(self._process.pid, signum)

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def command(self, *args: str, timeout: float = 5.0) -> Reply:
        """Send one command on a new connection and return its decoded reply.

        Simple strings, bulk strings and integers come back as text (as PING and FLUSHALL did
        before arrays were understood), nil as None, arrays as lists; an error reply raises
        `RuntimeError`. Enough to look at the server without a Redis client library.
        """
        return roundtrip(self.port, args, timeout=timeout, tls=self._client_tls)

    def info(self, section: str = "default") -> dict[str, str]:
        """`INFO section` as a dict of its `name:value` lines."""
        text = self.command("INFO", section)
        assert isinstance(text, str)
        fields = {}
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                fields[name] = value
        return fields


def wait_replicated(
    primary: RedisServer, replicas: Sequence[RedisServer], timeout: float = 30.0
) -> None:
    """Wait until each of `replicas` holds every write `primary` has made so far (its
    replication offset reached the primary's). `WAIT` cannot say so: it waits for the writes
    of its own connection only, and a new connection has made none."""
    offset = int(primary.info("replication")["master_repl_offset"])
    deadline = time.monotonic() + timeout
    for replica in replicas:
        while int(replica.info("replication").get("slave_repl_offset", "-1")) < offset:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out after {timeout} s waiting for the replica on port "
                    f"{replica.port} to reach offset {offset}"
                )
            time.sleep(0.01)


def roundtrip(
    port: int,
    args: Sequence[str],
    *,
    timeout: float,
    tls: ssl.SSLContext | None,
    server: str = "redis-server",
) -> Reply:
    """Send one command to 127.0.0.1:`port` (over TLS with a `tls` context) on a new
    connection and return its decoded reply; an error reply raises `RuntimeError`."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        sock = plain if tls is None else tls.wrap_socket(plain, server_hostname="127.0.0.1")
        with sock:
            sock.sendall(b"".join(parts))
            reply = _ReplyReader(sock).read()
    if isinstance(reply, _ErrorReply):
        raise RuntimeError(f"{server} replied {reply.text!r} to {args[0]}")
    return reply


class _ErrorReply:
    """An error reply (raised by `RedisServer.command`, never nested in a result)."""

    def __init__(self, text: str) -> None:
        self.text = text


class _ReplyReader:
    """Reads one RESP2 reply from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        self._buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size + 2:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return data

    def read(self) -> Reply | _ErrorReply:
        line = self._line()
        kind, rest = line[:1], line[1:].decode(errors="replace")
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            return _ErrorReply(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size).decode(errors="replace")
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            items: list[Reply] = []
            for _ in range(count):
                item = self.read()
                if isinstance(item, _ErrorReply):  # e.g. inside EXEC: keep it readable
                    item = f"-{item.text}"
                items.append(item)
            return items
        raise ConnectionError(f"unexpected reply from redis-server: {line[:80]!r}")
