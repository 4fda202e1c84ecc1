"""Real grid processes for the multi-process tests, started through the `girder` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import girder
from girder.backends import open_backend
from girder.backends.base import NodeInfo, NodeKind
from girder.testing.tethered import tethered_popen

TESTS = Path(__file__).parent

FAST_RECOVERY = {
    "GIRDER_HEARTBEAT_INTERVAL": "0.2",
    "GIRDER_HEARTBEAT_TTL": "1.5",
    "GIRDER_REAP_INTERVAL": "0.3",
    "GIRDER_IDLE_POLL": "0.5",
}


def signal_group(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """Send `signum` to the process group `proc` leads (a node started in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


CLIENT_OPTIONS: dict[str, Any] = {
    key.removeprefix("GIRDER_").lower(): float(value) for key, value in FAST_RECOVERY.items()
}
"""The same fast recovery, as keyword options of a client (`Grid.connect`, `Grid.local`)."""


class GridProcesses:
    """Starts `girder distributor` and `girder worker` processes; kills them all at the end."""

    def __init__(self, backend_url: str, logs: Path, **env: str) -> None:
        self.backend_url = backend_url
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            **FAST_RECOVERY,
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log_files: list[BinaryIO] = []

    def _start(
        self,
        args: list[str],
        log_name: str,
        wrapper: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `girder <args>`, behind `wrapper` (e.g. `ip netns exec NAME`) when given, with
        `env` over the environment of every process."""
        log = open(self.logs / f"{log_name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self._log_files.append(log)
        proc = tethered_popen(
            [*wrapper, sys.executable, "-m", "girder", *args, "--backend", self.backend_url],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: signals reach its children too
        )
        self.procs.append(proc)
        return proc

    def distributor(self, name: str = "pool") -> subprocess.Popen[bytes]:
        return self._start(["distributor", "--name", name], f"distributor-{name}")

    def worker(
        self,
        name: str,
        pool: str = "pool",
        *extra: str,
        wrapper: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        return self._start(
            ["worker", "--pool", pool, "--name", name, "--import", "gridfns", *extra],
            name,
            wrapper,
            env,
        )

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the node's process group: `girder worker` and the node it supervises."""
        signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._log_files:
            log.close()

    def log_text(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.logs.glob("*.log"))
        )


async def nodes(url: str) -> list[NodeInfo]:
    backend = open_backend(url)
    await backend.connect()
    try:
        return await backend.nodes()
    finally:
        await backend.close()


async def any_running(url: str) -> bool:
    """Whether some worker runs a request."""
    return any(n.running > 0 for n in await nodes(url) if n.kind == NodeKind.WORKER)


async def nothing_runs(url: str) -> bool:
    """Whether no node holds a request as running (none left to a node done with it)."""
    return all(n.running == 0 for n in await nodes(url))


async def cached_at_least(url: str, count: int) -> bool:
    """Whether the grid holds `count` cached results or more."""
    backend = open_backend(url)
    await backend.connect()
    try:
        return await backend.cache_size() >= count
    finally:
        await backend.close()


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 20, what: str = "condition"
) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_nodes(url: str, workers: int, distributors: int = 1) -> None:
    async def ready() -> bool:
        alive = [n for n in await nodes(url) if n.alive]
        return (
            sum(n.kind == NodeKind.WORKER for n in alive) >= workers
            and sum(n.kind == NodeKind.DISTRIBUTOR for n in alive) >= distributors
        )

    await wait_until(ready, what=f"{workers} workers and {distributors} distributors")


@asynccontextmanager
async def grid_on(
    redis_url: str | None, logs: Path, *, workers: int, io_concurrency: int | None = None
) -> AsyncIterator[tuple[girder.Grid, GridProcesses | None]]:
    """A grid of `workers` workers and a client: in this process on memory (no `redis_url`), or
    `girder distributor` and `girder worker` processes on Redis (their processes come too).
    `io_concurrency`: the workers' setting, when not the default."""
    if redis_url is None:
        async with girder.Grid.local(workers=workers, io_concurrency=io_concurrency) as local:
            yield local, None
        return
    env = {} if io_concurrency is None else {"GIRDER_IO_CONCURRENCY": str(io_concurrency)}
    procs = GridProcesses(redis_url, logs, **env)
    try:
        procs.distributor()
        for index in range(workers):
            procs.worker(f"w{index + 1}")
        await wait_for_nodes(redis_url, workers=workers)
        async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as client:
            yield client, procs
    finally:
        procs.stop_all()
