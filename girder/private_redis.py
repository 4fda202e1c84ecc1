"""A private `redis-server`: the state of a grid of processes on one machine (`girder up` without
`--backend`, `Grid.local(processes=N)`).

It listens on a Unix socket only (no TCP port), in a directory of its own that only this user can
enter (mode 0700), keeps nothing on disk, and dies with the process that started it (Linux's
parent-death signal). `stop()` stops it and deletes the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from girder.errors import ConfigurationError

INSTALL_HINT = (
    "install Redis (6.2 or newer): `sudo apt-get install redis-server` (Debian, Ubuntu), "
    "`sudo dnf install redis` (Fedora), `brew install redis` (macOS), or "
    "`conda install -c conda-forge redis-server`; or pass a backend URL of a running Redis"
)

SOCKET_NAME = "redis.sock"

_START_TIMEOUT = 20.0
"""Seconds the server gets to answer its first PING."""


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In a child, before exec: get `signum` when the parent dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG


def find_redis_server() -> str:
    """The path of `redis-server`, or a `ConfigurationError` that says how to install it."""
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigurationError(
            f"a private grid needs redis-server, not found on PATH: {INSTALL_HINT}"
        )
    return found


def socket_url(directory: Path) -> str:
    """The backend URL of the private server whose directory is `directory`."""
    return f"unix://{directory / SOCKET_NAME}"


class PrivateRedis:
    """One `redis-server` on a Unix socket in `directory` (made here, mode 0700; a new temporary
    directory when None). Use as a context manager, or `start()` and `stop()`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.binary = find_redis_server()
        self._given = directory
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.directory is None:
            raise RuntimeError("the private redis-server is not started")
        return socket_url(self.directory)

    def start(self) -> None:
        """Make the directory, start the server, wait until it answers."""
        if self._given is None:
            self.directory = Path(tempfile.mkdtemp(prefix="girder-"))
        else:
            self._given.mkdir(mode=0o700)  # a directory that exists is refused: not ours
            self.directory = self._given
        path = self.directory / SOCKET_NAME
        log = self.directory / "redis.log"
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port", "0",
                "--unixsocket", str(path),
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(log),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl, before exec
        )  # fmt: skip
        self._wait_ready(path, log)

    def _wait_ready(self, path: Path, log: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while not _pong(path):
            if self._process.poll() is not None:
                output = log.read_text(errors="replace") if log.exists() else ""
                self.stop()
                raise ConfigurationError(f"the private redis-server exited at start:\n{output}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigurationError(
                    f"the private redis-server did not answer within {_START_TIMEOUT:g} s"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and delete its directory."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _pong(path: Path) -> bool:
    """Whether a server answers PING on the socket `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(os.fspath(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
