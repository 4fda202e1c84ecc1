"""Logging through structlog. Each node binds its id; request logs add the key and job id."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import structlog

_configured_level: int | None = None


def configure(level: str = "WARNING") -> None:
    """Configure structlog once per process (key=value lines on stderr)."""
    global _configured_level
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)
    if _configured_level == numeric:
        return
    _configured_level = numeric
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def node_logger(node: str, **context: Any) -> Any:
    """A logger with the node id bound (and any further context)."""
    return structlog.get_logger("girder").bind(node=node, **context)


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
