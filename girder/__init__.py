"""girder: an asyncio-native calculation grid with memoized, re-entrant requests."""

from girder.chunking import map_reduce, map_reduce_stream
from girder.config import configure_logging
from girder.errors import (
    BackendError,
    Cancelled,
    ConfigurationError,
    GirderError,
    GridStopped,
    RequestError,
    SerializationError,
    SourceChanged,
    StageError,
)
from girder.functions import GridFunction, Request, function
from girder.grid import Grid, Handle
from girder.scheduler.context import call_reentrant, current_node, stream
from girder.sources import FileSource, file_source
from girder.topology import Printed, Stage, Topology

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Cancelled",
    "ConfigurationError",
    "FileSource",
    "GirderError",
    "Grid",
    "GridFunction",
    "GridStopped",
    "Handle",
    "Printed",
    "Request",
    "RequestError",
    "SerializationError",
    "SourceChanged",
    "Stage",
    "StageError",
    "Topology",
    "__version__",
    "call_reentrant",
    "configure_logging",
    "current_node",
    "file_source",
    "function",
    "map_reduce",
    "map_reduce_stream",
    "stream",
]
