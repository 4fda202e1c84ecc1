"""What a stage function prints, line by line, while other code of the process prints as usual.

`contextlib.redirect_stdout` replaces `sys.stdout` for the whole process, so two stages running
at once in one worker (two batons) would catch each other's lines. Instead, while any capture is
active, `sys.stdout` and `sys.stderr` are proxies that send a write to the capture of the context
that writes (a `ContextVar`, which asyncio tasks and `asyncio.to_thread` inherit) and any other
write to the real stream.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

LineSink = Callable[[str, str], None]
"""Receives (stream name, line without its newline); may be called from any thread."""

_sink: ContextVar[_Capture | None] = ContextVar("girder_capture", default=None)
_lock = threading.Lock()
_active = 0


class _Capture:
    """The partial lines of one captured call, per stream."""

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink
        self.partial = {"stdout": "", "stderr": ""}

    def write(self, stream: str, text: str) -> None:
        lines = (self.partial[stream] + text).split("\n")
        self.partial[stream] = lines.pop()
        for line in lines:
            self.sink(stream, line)

    def flush_rest(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self.sink(stream, rest)
            self.partial[stream] = ""


class _Router:
    """Stands in for `sys.stdout` or `sys.stderr` while captures are active."""

    def __init__(self, name: str, real: TextIO) -> None:
        self.name = name
        self.real = real

    def write(self, text: str) -> int:
        capture = _sink.get()
        if capture is None:
            return self.real.write(text)
        capture.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@contextmanager
def captured(sink: LineSink) -> Iterator[None]:
    """Send what this context (and the tasks and threads it starts) prints to `sink`."""
    capture = _Capture(sink)
    _install()
    token = _sink.set(capture)
    try:
        yield
    finally:
        _sink.reset(token)
        capture.flush_rest()
        _uninstall()


def _install() -> None:
    global _active
    with _lock:
        if _active == 0:
            sys.stdout = _Router("stdout", sys.stdout)
            sys.stderr = _Router("stderr", sys.stderr)
        _active += 1


def _uninstall() -> None:
    global _active
    with _lock:
        _active -= 1
        if _active == 0:
            for name in ("stdout", "stderr"):
                router = getattr(sys, name)
                if isinstance(router, _Router):  # someone else may have replaced it since
                    setattr(sys, name, router.real)
