"""Logging with a library's manners: structlog for girder's own lines, never the host's set-up.

girder's loggers are structlog loggers with processors of their own (the global structlog
configuration is neither read nor changed) that write to the standard-library logger named
`girder`. So inside an application girder logs like any library: its WARNING lines and above
reach the application's handlers (or stderr when it has none), and the application decides
levels and format (`logging.getLogger("girder").setLevel(logging.DEBUG)`). Only girder's own
processes (the `girder` command) set up handlers, or an application that asks:
`girder.configure_logging()` (in `girder.config`: it reads the settings).

Each record carries its structured fields (`record.girder_event`, a dict with `event` first);
its message is the same as `event key=value ...` for plain formatters.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal

import structlog

LOGGER_NAME = "girder"
LogFormat = Literal["console", "json"]

_stdlib_logger = logging.getLogger(LOGGER_NAME)


def _to_stdlib(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: a plain message for plain formatters, the fields for girder's."""
    fields = {"event": event_dict.pop("event", ""), **event_dict}
    text = " ".join([str(fields["event"]), *(f"{k}={v!r}" for k, v in event_dict.items())])
    return (text,), {"extra": {"girder_event": fields}}


_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.processors.format_exc_info,
    _to_stdlib,
]


def get_logger(**context: Any) -> Any:
    """A girder logger (structlog, bound to `context`) writing to the `girder` stdlib logger."""
    return structlog.stdlib.BoundLogger(_stdlib_logger, _PROCESSORS, context)


def node_logger(node: str, **context: Any) -> Any:
    """A logger with the node id bound (and any further context)."""
    return get_logger(node=node, **context)


def debug_enabled() -> bool:
    """Whether girder's DEBUG lines go anywhere (cheap: checked before building per-request
    lines on hot paths)."""
    return _stdlib_logger.isEnabledFor(logging.DEBUG)


class GirderFormatter(logging.Formatter):
    """Renders girder's records (and any other) as `key=value` lines or JSON objects."""

    def __init__(self, fmt: LogFormat = "console") -> None:
        super().__init__()
        self._render: Any = (
            structlog.processors.JSONRenderer()
            if fmt == "json"
            else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
        )

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "girder_event", None) or {"event": record.getMessage()}
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        event = {
            "timestamp": when.isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            **fields,
        }
        if record.name != LOGGER_NAME:
            event.setdefault("logger", record.name)
        if record.exc_info and "exception" not in event:
            event["exception"] = self.formatException(record.exc_info)
        return str(self._render(None, record.levelname.lower(), event))


_handler: logging.Handler | None = None


def configure(level: str = "WARNING", fmt: LogFormat = "console") -> None:
    """Send girder's log lines to stderr at `level`, as `key=value` lines or JSON.

    Touches only the `girder` logger (its one handler, its level; it stops propagating, so
    lines are not printed twice): never the root logger, nor structlog's global configuration.
    Calling it again replaces the previous set-up."""
    global _handler
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(GirderFormatter(fmt))
    if _handler is not None:
        _stdlib_logger.removeHandler(_handler)
    _handler = handler
    _stdlib_logger.addHandler(handler)
    _stdlib_logger.setLevel(numeric)
    _stdlib_logger.propagate = False


def log_to_files(directory: str, node: str) -> None:
    """Send this process's stdout to `directory/<node>.out` and its stderr (where the structured
    log lines go) to `directory/<node>.err`, appending. The file descriptors themselves are
    redirected, so the processes it starts (a supervised worker's node) write there too.

    For the node processes of the `girder` command only: a library never redirects its host's
    output."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for stream, suffix in ((sys.stdout, "out"), (sys.stderr, "err")):
        stream.flush()
        target = os.open(folder / f"{node}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(target, stream.fileno())
        finally:
            os.close(target)
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)  # a line reaches the file when printed
