"""What every benchmark script shares: progress lines, percentiles, fresh cache tags, and the
child processes a benchmark starts (one log file each; stopped with SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
STOP_GRACE = 5.0
"""Seconds a process gets to stop after SIGTERM before it is killed."""


def say(text: str) -> None:
    """A progress line on stderr (stdout carries only the JSON lines)."""
    print(text, file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples` (0 < fraction <= 1)."""
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fresh_tag(prefix: str) -> str:
    """A tag no earlier run used: keys with it are not in any cache."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def grid_secret() -> str:
    """The secret every grid of this run signs with (Redis grids refuse to run without one):
    GIRDER_SECRET, set for this process, and so for its in-process clients, on first use when the
    caller has not set it."""
    return os.environ.setdefault("GIRDER_SECRET", secrets.token_urlsafe(32))


def repo_env(**extra: str) -> dict[str, str]:
    """This environment with the repository importable, the run's grid secret, and `extra`."""
    python_path = os.pathsep.join(
        part for part in (str(REPO), os.environ.get("PYTHONPATH", "")) if part
    )
    return {**os.environ, "PYTHONPATH": python_path, "GIRDER_SECRET": grid_secret(), **extra}


class Children:
    """Processes a benchmark starts, by name. `close` ends them all and closes their logs."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._files.append(log)
        process = subprocess.Popen(
            list(command),
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.running[name] = process
        return process

    def girder(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `python -m girder ARGS`."""
        return self.start(name, [sys.executable, "-m", "girder", *args])

    def dead(self) -> list[str]:
        """Names of the processes that exited."""
        return [name for name, process in self.running.items() if process.poll() is not None]

    def tail(self, names: Sequence[str] | None = None, chars: int = 2000) -> str:
        """The end of the named processes' logs (all by default)."""
        out = []
        for name in list(self.running) if names is None else names:
            path = self.logs / f"{name}.log"
            if path.exists():
                out.append(f"--- {name}.log\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def stop(
        self, names: Sequence[str] | None = None, grace: float = STOP_GRACE, kill: bool = False
    ) -> None:
        """SIGTERM (SIGKILL with `kill`) the named processes (all by default); after `grace`
        seconds, SIGKILL what is left."""
        chosen = list(self.running) if names is None else [n for n in names if n in self.running]
        for name in chosen:
            if self.running[name].poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.running[name].send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name in chosen:
            process = self.running.pop(name)
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"  {name} (pid {process.pid}) ignored SIGTERM; killing it")
                process.kill()
                process.wait()

    def close(self, grace: float = STOP_GRACE, kill: bool = False) -> None:
        """Stop every process and close the logs."""
        self.stop(grace=grace, kill=kill)
        for log in self._files:
            log.close()
        self._files.clear()
