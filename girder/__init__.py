"""girder: an asyncio-native calculation grid with memoized, re-entrant requests."""

from girder.config import configure_logging
from girder.errors import (
    BackendError,
    Cancelled,
    ConfigurationError,
    GirderError,
    GridStopped,
    RequestError,
    SerializationError,
)
from girder.functions import GridFunction, Request, function
from girder.grid import Grid, Handle
from girder.scheduler.context import call_reentrant, current_node, stream

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Cancelled",
    "ConfigurationError",
    "GirderError",
    "Grid",
    "GridFunction",
    "GridStopped",
    "Handle",
    "Request",
    "RequestError",
    "SerializationError",
    "__version__",
    "call_reentrant",
    "configure_logging",
    "current_node",
    "function",
    "stream",
]
