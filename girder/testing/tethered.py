"""`tethered_popen`: the test servers die with the process that started them.

A test run killed outright (SIGKILL, a CI job's time limit, pytest-timeout ending a hung run
with `os._exit`) runs no teardown, and would leave its servers listening and its grid
processes waiting for them. On Linux each child is therefore started with the parent-death
signal (`PR_SET_PDEATHSIG`, SIGKILL). The kernel sends it when the *thread* that forked the
child ends, not the process, and fixtures start servers from short-lived threads too
(`asyncio.to_thread` in a test), so every start goes through one thread that lives as long as
the process. Elsewhere than Linux the children are plain `subprocess.Popen`s.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

_PR_SET_PDEATHSIG = 1

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="girder-spawner")
"""The one thread that forks the children (it ends only when the process does)."""


def _prctl() -> Callable[..., int] | None:
    """libc's `prctl`, looked up here rather than between fork and exec (where another
    thread may have held the loader's lock at the fork)."""
    try:
        return cast("Callable[..., int]", ctypes.CDLL(None, use_errno=True).prctl)
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the spawning thread (the process) ends."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tethered_popen(args: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(args, **options)`, killed by the kernel if this process dies."""
    if _PRCTL is None:
        return subprocess.Popen(args, **options)

    def start() -> subprocess.Popen[bytes]:
        # The child calls one C function that was looked up before the fork.
        return subprocess.Popen(args, preexec_fn=_die_with_parent, **options)  # noqa: PLW1509

    return _spawner.submit(start).result()
