"""girder: an asyncio-native calculation grid with memoized, re-entrant requests."""

from girder.errors import (
    BackendError,
    Cancelled,
    ConfigurationError,
    GirderError,
    RequestError,
    SerializationError,
    StageError,
)
from girder.functions import GridFunction, Request, function
from girder.grid import Grid, Handle
from girder.scheduler.context import call_reentrant, current_node, stream
from girder.topology import Printed, Stage, Topology

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Cancelled",
    "ConfigurationError",
    "GirderError",
    "Grid",
    "GridFunction",
    "Handle",
    "Printed",
    "Request",
    "RequestError",
    "SerializationError",
    "Stage",
    "StageError",
    "Topology",
    "__version__",
    "call_reentrant",
    "current_node",
    "function",
    "stream",
]
