"""`Grid.local(processes=N)`: all cores of this machine, from a script or a notebook.

The grid starts `girder up` in a child process, without a backend: it starts a private
`redis-server` on a Unix socket in a new directory, a distributor and N worker processes, and
supervises them (see `girder.supervisor`). The secret is new for each grid and travels in the
environment, never on a command line. Only this process knows it, so the workers may run by name
functions of any module (`allowed_modules = ["*"]`; they import them from this process's
`sys.path`); functions of `__main__` or a notebook travel by value, signed, as on any Redis grid.

When the grid stops, `girder up` gets SIGTERM and stops everything it started, then deletes the
directory. When this process dies without stopping it (`kill -9`, a crashed kernel), `girder up`
gets SIGTERM from Linux (the parent-death signal) and does the same. It runs in a session of its
own, so that signals meant for this process's group (Ctrl-C in a terminal, a kernel's shutdown)
reach it only that way, after this process is gone or through `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from girder.backends.base import NodeKind, StateBackend
from girder.errors import ConfigurationError
from girder.private_redis import die_with_parent, find_redis_server, socket_url

_NOT_INHERITED = {"GIRDER_BACKEND", "GIRDER_NAME", "GIRDER_SECRET", "GIRDER_WORKERS"}
"""Settings of this process (or options of the grid) that are not its processes'."""

START_TIMEOUT = 120.0
"""Seconds the processes get to start (Python start-up, N times, on a busy machine)."""

STOP_TIMEOUT = 30.0
"""Seconds `girder up` gets to stop its children before it is killed."""


class LocalProcesses:
    """The `girder up` process of one `Grid.local(processes=N)`, and what it needs to know."""

    def __init__(self, workers: int, options: dict[str, Any]) -> None:
        """`options`: the grid's settings given as keywords, for the workers too."""
        find_redis_server()  # say how to install it before anything starts
        self.workers = workers
        self.options = options
        self.directory = _temporary_root() / f"girder-{secrets.token_hex(8)}"
        """Made by `girder up` (mode 0700) and deleted by it."""
        self.url = socket_url(self.directory)
        given = options.get("secret")
        self.secret = str(given) if given else secrets.token_urlsafe(32)
        self._process: asyncio.subprocess.Process | None = None
        self._output: asyncio.Task[None] | None = None

    def _environment(self) -> dict[str, str]:
        """This environment, the options, the secret, and this process's `sys.path`."""
        env = {k: v for k, v in os.environ.items() if k.upper() not in _NOT_INHERITED}
        for name, value in self.options.items():
            if value is not None and f"GIRDER_{name.upper()}" not in _NOT_INHERITED:
                env[f"GIRDER_{name.upper()}"] = _env_value(value)
        paths = [path or os.getcwd() for path in sys.path]
        env.update(
            PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
            GIRDER_SECRET=self.secret,
            GIRDER_ALLOWED_MODULES='["*"]',
        )
        return env

    async def start(self) -> None:
        """Start `girder up` and wait until its redis-server answers (its URL is printed)."""
        command = [
            sys.executable, "-m", "girder", "up",
            "--private-dir", str(self.directory),
            "--workers", str(self.workers),
        ]  # fmt: skip
        self._process = await asyncio.create_subprocess_exec(
            *command,
            env=self._environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,  # only a prctl, before exec
            # Its own session: a signal to this process's group (a Jupyter kernel's shutdown
            # kills the kernel's group) does not reach it; it stops, and cleans up, on SIGTERM.
            start_new_session=True,
        )
        stdout = self._process.stdout
        if stdout is None:  # pragma: no cover - asked for above
            raise RuntimeError("girder up has no stdout")
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self._read_url(self._process, stdout)
        except BaseException:
            await self.stop()
            raise
        self._output = asyncio.create_task(_forward(stdout))

    async def _read_url(
        self, process: asyncio.subprocess.Process, stdout: asyncio.StreamReader
    ) -> None:
        """Until `girder up` prints its backend URL (its redis-server answers)."""
        while True:
            line = await stdout.readline()
            if not line:
                code = await process.wait()
                raise ConfigurationError(
                    f"the private grid's `girder up` exited with status {code} at start "
                    "(its error is above, on stderr)"
                )
            if line.decode().strip() == f"GIRDER_BACKEND={self.url}":
                return
            sys.stdout.write(line.decode(errors="replace"))

    async def wait_for_workers(self, backend: StateBackend) -> None:
        """Until the distributor and every worker have joined the grid."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            alive = [node for node in await backend.nodes() if node.alive]
            workers = sum(node.kind == NodeKind.WORKER for node in alive)
            if workers >= self.workers and any(n.kind == NodeKind.DISTRIBUTOR for n in alive):
                return
            if self._process is None or self._process.returncode is not None:
                raise ConfigurationError("the private grid's `girder up` stopped at start")
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"the private grid's {self.workers} workers did not start within "
                    f"{START_TIMEOUT:g} s ({workers} did)"
                )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop `girder up` (it stops its children and redis-server, and deletes the
        directory); kill it if it does not stop in time. Delete the directory if it is left."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._output is not None:
            self._output.cancel()  # a process left holding the pipe must not hold this up
            with contextlib.suppress(BaseException):
                await self._output
            self._output = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _temporary_root() -> Path:
    """The temporary folder, unless the socket's path would be too long there (a Unix socket's
    path has at most 104 bytes on macOS, whose temporary folders are long): then /tmp."""
    root = Path(tempfile.gettempdir())
    return root if len(str(root)) <= 60 else Path("/tmp")


def _env_value(value: Any) -> str:
    """A setting as `GIRDER_*` holds it: lists and booleans in JSON, the rest as text."""
    return json.dumps(value) if isinstance(value, list | dict | bool) else str(value)


async def _forward(stdout: asyncio.StreamReader) -> None:
    """What the workers print goes to this process's stdout (a notebook's cell)."""
    while line := await stdout.readline():
        sys.stdout.write(line.decode(errors="replace"))
