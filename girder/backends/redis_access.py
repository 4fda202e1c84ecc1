"""`RedisAccess`: what `RedisBackend` lends the helpers that keep state outside the grid's slot
(`RedisBlobs`, `SpreadResults`, `OwnInboxes`): its scripts, its retries through outages, and its
clients per slot and per server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from girder.backends.resp import Pipelined, ReplyError

Run = Callable[..., Awaitable[Any]]
"""Runs a script by name with its arguments, retried through outages."""
Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""Calls an attempt until the server answers it (`RedisBackend._retrying`)."""


@dataclass(frozen=True, slots=True)
class RedisAccess:
    """A `RedisBackend`'s operations, for its helpers."""

    run: Run
    """A grid script: `run(name, *args)`."""
    journaled: Run
    """A journaled grid script of a node, run once even if sent again:
    `journaled(name, node, *args)`."""
    slot_script: Run
    """A script of the slot of its keys (`SLOT_SCRIPTS`): `slot_script(name, keys, *args)`."""
    slot_scripts: Callable[..., Awaitable[list[Any]]]
    """A script of a slot of its own once per (keys, args), one pipeline per server:
    `slot_scripts(name, [(keys, args), ...])`."""
    commands: Callable[..., Awaitable[list[Any]]]
    """Commands each of one key, one pipeline per server: `commands(what, [(key, command),
    ...])`; error replies are returned."""
    retrying: Retrying
    """An attempt, tried again through outages: `retrying(what, attempt)`."""
    at: Callable[[str], Pipelined]
    """The client for a key's slot (its primary on a cluster)."""
    servers: Callable[[], Awaitable[list[Pipelined]]]
    """One client per server (per primary of a cluster)."""
    error: Callable[[str, ReplyError], Exception]
    """The `BackendError` for an error reply to an operation."""
