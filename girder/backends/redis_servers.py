"""Each server's own figures, for `StateBackend.servers`: where a grid's load goes.

One round trip per server: `INFO` (memory, CPU, commands), `CLIENT INFO` (the server's side of
this client's connection, `laddr`: no name is guessed from a URL or a slot map) and `DBSIZE`.
The figures are the server's, for every key it holds: a server shared with other programs
counts their load too.
"""

from __future__ import annotations

from girder.backends.base import ServerLoad
from girder.backends.resp import Command

SLOTS = 16384
"""The hash slots of a Redis Cluster (one server serves them all)."""

QUERY: list[Command] = [("INFO",), ("CLIENT", "INFO"), ("DBSIZE",)]
"""What `server_load` reads, as one pipeline to one server."""


def server_load(replies: list[object], *, slots: int, grid_slot: bool) -> ServerLoad:
    """A `ServerLoad` from the replies to `QUERY`; `ValueError` if they are not what a Redis
    server answers."""
    info, client, keys = replies
    if not (isinstance(info, bytes) and isinstance(client, bytes) and isinstance(keys, int)):
        raise ValueError(f"not the replies of a Redis server to INFO: {replies!r:.200}")
    fields = _fields(info.decode(errors="replace"), "\r\n", ":")
    address = _fields(client.decode(errors="replace").strip(), " ", "=").get("laddr", "?")
    try:
        return ServerLoad(
            address=address,
            slots=slots,
            grid_slot=grid_slot,
            memory=int(fields["used_memory"]),
            cpu_seconds=float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"]),
            commands=int(fields["total_commands_processed"]),
            ops_per_second=int(fields["instantaneous_ops_per_sec"]),
            keys=keys,
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"INFO of {address} lacks a figure or garbles it: {exc}") from exc


def _fields(text: str, separator: str, equals: str) -> dict[str, str]:
    """`name<equals>value` pairs of `text`, split at `separator` (other parts skipped)."""
    pairs = (part.partition(equals) for part in text.split(separator))
    return {name: value for name, found, value in pairs if found}
