"""`RedisServer`: a throw-away `redis-server` process for tests.

It listens on a free loopback port (never the system server's 6379) and on a unix socket in its
own temporary directory, keeps nothing on disk (`--save "" --appendonly no`), and can be killed
(SIGKILL) and restarted on the same port to test recovery. Only the standard library is used, so
the pytest plugin can import this module even where the `redis` package is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self


def find_redis_server() -> str | None:
    """The path of a `redis-server` binary on PATH, or None."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process on 127.0.0.1:`port`; `start` it, or use it as a context."""

    def __init__(self, binary: str | None = None, *, startup_timeout: float = 10.0) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise FileNotFoundError("no redis-server binary on PATH")
        self.binary = found
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="girder-redis-"))
        self.unix_socket = str(self._dir / "redis.sock")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """`unix://` URL of database 0."""
        return f"unix://{self.unix_socket}?db=0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        log = self._dir / "redis.log"
        # Never inherit a config file; everything is on the command line.
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--unixsocket", self.unix_socket,
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir),
                "--logfile", str(log),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                output = log.read_text(errors="replace") if log.exists() else ""
                self._process = None
                raise RuntimeError(f"redis-server exited at start-up:\n{output}")
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL the server (its state is lost: nothing is saved)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        """Kill the server and start a fresh one on the same port and socket."""
        self.kill()
        self.start()

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

    def command(self, *args: str) -> str:
        """Send one command; return a simple-string or integer reply (raises on an error reply).

        Enough for PING and FLUSHALL without depending on a Redis client library.
        """
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join(parts))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                reply += chunk
        text = reply.decode(errors="replace").rstrip("\r\n")
        if text[:1] in ("+", ":"):
            return text[1:]
        raise RuntimeError(f"redis-server replied {text!r} to {args[0]}")

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
