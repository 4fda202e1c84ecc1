"""`girder up`: a distributor and N workers on this machine, kept running, or stopped loudly.

A child that dies while `girder up` is not stopping (a crash, `kill -9`, a request that killed
its worker) is started again, after a delay that doubles with each of its recent deaths, from
`FIRST_DELAY` up to `MAX_DELAY`. A child that died more than `restart_limit` times within the last
`restart_window` seconds is broken (a module that cannot be imported, a bad setting, a crash
loop): `girder up` then stops every child and exits with status 1, naming it.

Children get the backend URL and the secret in their environment, never on their command line,
which every local user can read in /proc. Without a secret on a shared backend (and unless
insecure), `girder up` uses the one in `girder.security.default_secret_file()`, made on first use.
Children die with `girder up` (Linux's parent-death signal: SIGTERM, so they hand work back).

Without a backend, `girder up` starts a private `redis-server` on a Unix socket in a directory of
its own (`girder.private_redis`), prints `GIRDER_BACKEND=unix://...` on stdout for clients, and
stops it and deletes the directory when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from girder.backends import open_backend
from girder.config import Settings
from girder.log import configure, node_logger
from girder.private_redis import PrivateRedis, die_with_parent
from girder.security import default_secret_file, read_or_create_secret

FIRST_DELAY = 0.5
"""Seconds before a child that died is started again (doubling with each recent death)."""

MAX_DELAY = 30.0
"""The longest wait before a restart, in seconds."""

STOP_GRACE = 15.0
"""Seconds a child gets to hand its work back after SIGTERM before it is killed."""

_log = node_logger("up")


@dataclass
class Child:
    """One supervised process: a distributor or a worker, started again when it dies."""

    name: str
    command: list[str]
    process: asyncio.subprocess.Process | None = None
    deaths: deque[float] = field(default_factory=deque)


def planned_children(settings: Settings) -> list[Child]:
    """The distributor and the workers; their argv carries no URL and no secret."""
    node = [sys.executable, "-m", "girder"]
    logs = ["--log-level", settings.log_level]
    if settings.log_dir is not None:
        logs += ["--log-dir", settings.log_dir]
    children = [Child("distributor", [*node, "distributor", "--name", settings.pool, *logs])]
    worker = [*node, "worker", "--pool", settings.pool, "--concurrency", str(settings.concurrency)]
    for module in settings.imports:
        worker += ["--import", module]
    children += [Child(f"worker-{n + 1}", [*worker, *logs]) for n in range(settings.workers)]
    return children


def child_environment(settings: Settings) -> dict[str, str]:
    """This environment plus the backend, the log level and format, and the secret (if any)."""
    env = {k: v for k, v in os.environ.items() if k.upper() != "GIRDER_NAME"}  # one name each
    env["GIRDER_BACKEND"] = settings.backend
    env["GIRDER_LOG_LEVEL"] = settings.log_level
    env["GIRDER_LOG_FORMAT"] = settings.log_format
    secret = grid_secret(settings)
    if secret is not None:
        env["GIRDER_SECRET"] = secret
    return env


def grid_secret(settings: Settings) -> str | None:
    """The secret the children share: the configured one; on a shared backend without one and
    without `insecure`, the one kept in the secret file (its path is logged, never the secret)."""
    if settings.secret is not None:
        return settings.secret.get_secret_value()
    if settings.insecure or not open_backend(settings.backend, settings=settings).shared:
        return None
    path = default_secret_file()
    secret = read_or_create_secret(path)
    _log.warning(
        "no GIRDER_SECRET set: the grid's nodes use the secret in the file; give clients the "
        'same, e.g. export GIRDER_SECRET="$(cat FILE)"',
        file=str(path),
    )
    return secret


class Supervisor:
    """Keeps `children` running until SIGTERM or SIGINT, or until one keeps dying."""

    def __init__(self, settings: Settings, children: list[Child], env: dict[str, str]) -> None:
        self.children = children
        self.env = env
        self.limit = settings.restart_limit
        self.window = settings.restart_window
        self._stopping = False

    async def run(self) -> int:
        """0 after a requested stop; 1 when a child kept dying (everything is stopped)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        keepers = [asyncio.create_task(self._keep(child)) for child in self.children]
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *keepers], return_when=asyncio.FIRST_COMPLETED)
        self._stopping = True
        for task in done - {stopped}:
            if (error := task.exception()) is not None:  # could not even start a child
                _log.error("cannot supervise; stopping the grid", error=repr(error))
        for task in [stopped, *keepers]:
            task.cancel()
        await asyncio.gather(stopped, *keepers, return_exceptions=True)
        await self._stop_children()
        return 0 if stopped in done else 1

    async def _keep(self, child: Child) -> None:
        """Run `child`, and again after each death; return when it died too often."""
        while True:
            child.process = await asyncio.create_subprocess_exec(
                *child.command,
                env=self.env,
                preexec_fn=die_with_parent,  # only a prctl, before exec
            )
            code = await child.process.wait()
            if self._stopping:
                return
            now = time.monotonic()
            child.deaths.append(now)
            while child.deaths[0] < now - self.window:
                child.deaths.popleft()
            if len(child.deaths) > self.limit:
                _log.error(
                    f"{child.name} died {len(child.deaths)} times within {self.window:g} s "
                    "(GIRDER_RESTART_LIMIT, GIRDER_RESTART_WINDOW); giving up: stopping the grid "
                    "(see its output above)",
                    exit_code=code,
                )
                return
            delay = min(FIRST_DELAY * 2 ** (len(child.deaths) - 1), MAX_DELAY)
            _log.warning(f"{child.name} died; restarting it", exit_code=code, delay=delay)
            await asyncio.sleep(delay)

    async def _stop_children(self) -> None:
        """SIGTERM every running child; SIGKILL those still running after `STOP_GRACE`."""
        running = [c.process for c in self.children if c.process and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            async with asyncio.timeout(STOP_GRACE):
                await asyncio.gather(*(process.wait() for process in running))
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    _log.warning("a child ignored SIGTERM; killing it", pid=process.pid)
                    process.kill()
                    await process.wait()


def run_up(settings: Settings, *, private: bool = False, directory: Path | None = None) -> int:
    """`girder up`: supervise a distributor and `settings.workers` workers; the exit status.
    With `private`, on a private redis-server in `directory` (default: a temporary one)."""
    configure(settings.log_level, settings.log_format)
    if not private:
        return _supervise(settings)
    with PrivateRedis(directory) as redis:
        print(f"GIRDER_BACKEND={redis.url}", flush=True)
        return _supervise(settings.with_overrides(backend=redis.url))


def _supervise(settings: Settings) -> int:
    env = child_environment(settings)
    return asyncio.run(Supervisor(settings, planned_children(settings), env).run())
