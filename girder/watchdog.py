"""Time limits of sync requests: `girder worker` runs its node under a small supervisor.

A sync grid function cannot be interrupted in its thread, and it holds the worker's event loop:
only killing the process stops it. So `girder worker` starts its node in a child process and
watches it. Before a sync request with a time limit starts, the child writes the request's key
and deadline to a pipe (`WatchPipe`); when the request ends, it says so. A request still running
past its deadline gets the child killed (SIGKILL); the supervisor then fails that request with
kind "timeout" (completing it as its owner, so it is not counted as a crash and never retried),
hands the child's other requests back at once (`StateBackend.leave`, as the reaper would after a
`kill -9`), and starts a new child. A child that exits by itself ends the supervisor with the
same status (restarting crashed workers is `girder up`'s job). The child dies with its
supervisor (Linux's parent-death signal), so killing `girder worker` kills its node.

Async requests need none of this: their time limit cancels them where they wait (see `Worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from girder.backends import open_backend
from girder.backends.base import StateBackend
from girder.config import Settings
from girder.errors import RequestError, SerializationError
from girder.log import node_logger
from girder.serialization import Codec, Outcome

WATCH_FD_ENV = "GIRDER_WATCHDOG_FD"
"""The environment variable that gives a supervised worker the pipe to its supervisor."""

_log = node_logger("watchdog")


class WatchPipe:
    """The worker's end: tells the supervisor which sync request runs until when."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def from_environment(cls) -> WatchPipe | None:
        fd = os.environ.get(WATCH_FD_ENV)
        return None if fd is None else cls(int(fd))

    def started(self, node: str, key: str, limit: float) -> None:
        """A sync request of `node` starts; it may run `limit` seconds."""
        deadline = time.monotonic() + limit
        self._write(f"start {deadline!r} {limit!r} {node} {key}\n")

    def ended(self) -> None:
        self._write("end\n")

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: so is this process, soon
            os.write(self._fd, line.encode())


@dataclass
class _Running:
    """The sync request the child runs now."""

    deadline: float
    limit: float
    node: str
    key: str


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the supervisor dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WorkerSupervisor:
    """Runs `girder worker` in a child process and enforces sync time limits."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self._stopping = False
        self._child: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Run children until one exits by itself (then exit with its status, so that whoever
        runs `girder worker`, `girder up` say, sees it as before)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        while True:
            code, timed_out = self._run_child()
            if timed_out is None or self._stopping:
                return 0 if self._stopping else code
            asyncio.run(_fail_timed_out(self.settings, timed_out))

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)

    def _run_child(self) -> tuple[int, _Running | None]:
        """Run one child until it exits or overruns a time limit (then kill it)."""
        read, write = os.pipe()
        env = {**os.environ, WATCH_FD_ENV: str(write)}
        child = self._child = subprocess.Popen(
            [sys.executable, "-m", "girder", *self.argv],
            env=env,
            pass_fds=(write,),
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl, before exec
        )
        os.close(write)
        try:
            running = self._watch(read, child)
        finally:
            os.close(read)
        if running is not None:
            child.kill()
        return child.wait(), running

    def _watch(self, read: int, child: subprocess.Popen[bytes]) -> _Running | None:
        """Follow the child's reports; the request that overran its limit, or None on exit."""
        running: _Running | None = None
        buffer = b""
        while True:
            wait = None if running is None else max(0.0, running.deadline - time.monotonic())
            try:
                ready, _, _ = select.select([read], [], [], wait)
            except InterruptedError:
                continue
            if not ready:
                if running is not None and time.monotonic() >= running.deadline:
                    return running
                continue
            data = os.read(read, 4096)
            if not data:  # the child exited (or closed its end)
                return None
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                running = _parse(line.decode(), running)


def _parse(line: str, running: _Running | None) -> _Running | None:
    words = line.split(" ", 4)
    if words[0] == "start" and len(words) == 5:
        return _Running(float(words[1]), float(words[2]), words[3], words[4])
    if words[0] == "end":
        return None
    return running


async def _fail_timed_out(settings: Settings, running: _Running) -> None:
    """Fail the request that overran its limit (as its owner) and hand back the rest."""
    backend = open_backend(settings.backend, settings=settings)
    await backend.connect()
    try:
        codec = Codec(settings.secret_bytes(), settings.max_payload_bytes)
        readable = await _readable(backend, codec, running.key)
        error = RequestError(
            readable,
            f"took longer than its time limit of {running.limit:g} s; its worker process "
            "was killed and replaced",
            kind="timeout",
        )
        data = codec.encode_outcome(Outcome(error=error), running.key, lambda: readable)
        await backend.complete(
            running.node, running.key, data, cache=False, error=f"{readable}: {error.message}"
        )
        handed_back = await backend.leave(running.node)
        _log.error(
            "sync request over its time limit: worker process killed and replaced",
            request=readable,
            key=running.key,
            node=running.node,
            handed_back=handed_back,
        )
    finally:
        await backend.close()


async def _readable(backend: StateBackend, codec: Codec, key: str) -> str:
    try:
        [data] = await backend.payloads([key])
        if data:
            return codec.decode_request(data, key).readable()
    except SerializationError:
        pass
    return f"request {key}"


def supervised() -> bool:
    """Whether this process is the node of a `WorkerSupervisor`."""
    return WATCH_FD_ENV in os.environ
