"""Logging through structlog. Each node binds its id; request logs add the key and job id."""

from __future__ import annotations

import logging
import sys
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
