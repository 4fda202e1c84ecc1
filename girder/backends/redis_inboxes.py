"""`OwnInboxes`: the notifications of a node in a slot of its own, not in the grid's.

On with `Settings.spread_notifications`. A node's inbox (its notifications: outcomes, partial
answers, cancellation notices) is otherwise a list in the grid's slot, so on a Redis Cluster one
primary takes every notification and answers every wait for one. With this on, the inbox is
`{<key_prefix>:node:<node>}:inbox`: the inboxes, and the blocking waits on them, spread over
the primaries by node. It is the first step of the sharded design in docs/scaling.md.

The node says where its inbox is when it joins (a field of its hash in the grid's slot), so
that the processes of one grid need not agree on the setting: a script that notifies a node
(`complete`, `publish`, `cancel`, `ask_to_cancel`) pushes into an inbox in the grid's slot as
before, or, for a node with its own, reports the notification's head in its reply (see
`post_note` in common.lua), and the calling process posts it there. So a notification is two
ordered steps:

1. grid slot, in the script that makes the news (the completion, say): it happens, and the
   waiters to tell are read and reported;
2. each waiter's slot (`inbox_post`): append the notification to its inbox.

A reply lost after step 1 is safe: the scripts that report posts are journaled (a completion
sent again returns the first run's report) or report them again when repeated (`publish`,
`ask_to_cancel`). A notification posted twice is harmless: a waiter resolves a key once, a stream
drops an answer it has, a cancellation notice of a cancelled key changes nothing. A process
that dies between the steps leaves the waiter untold; the waiter's own checks (it submits
again what it waited long for, see the scheduler) find the outcome cached, as after any lost
notification.

Waiting (`take`) is the same as for an inbox in the grid's slot, on the node's slot: settle
what the last wait took, block with BLMOVE until the inbox has an entry, take the rest, one
round trip. The inbox and the taken list expire `OWN_INBOX_TTL_MS` after they were last
written; a node deletes both when it leaves, and a reaper those of the nodes it reaps (the
`reap` script names the dead nodes that had their own).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from girder.backends.redis_access import RedisAccess
from girder.backends.redis_keys import RedisKeys
from girder.backends.redis_scripts import OWN_INBOX_TTL_MS, SLOT_SCRIPTS, Script
from girder.backends.resp import Command, Pipelined, ReplyError

Blocking = Callable[[str, list[Command], float], Awaitable[list[Any]]]
"""Runs commands that may block up to the given seconds, at the primary of a key's slot."""


class OwnInboxes:
    """Posting to, waiting on and deleting the inboxes of nodes in their own slots."""

    def __init__(
        self,
        keys: RedisKeys,
        access: RedisAccess,
        scripts: Mapping[str, Script],
        blocking: Blocking,
    ) -> None:
        self._keys = keys
        self._access = access
        self._scripts = scripts
        self._blocking = blocking
        self._received: set[str] = set()
        """Nodes whose last wait's reply arrived (the next wait drops what it took)."""

    def _slot_keys(self, node: str) -> tuple[str, str, str]:
        """The keys of node's `inbox_settle` and `inbox_take`: inbox, taken, migration probe."""
        keys = self._keys
        return keys.own_inbox(node), keys.own_taken(node), keys.own_migrating(node)

    async def post(self, posts: Sequence[bytes], tails: Mapping[bytes, bytes]) -> None:
        """Step 2 of a notification: `posts` is a script's report (node, head, node, head, ...);
        each notification is its head and the tail that `tails` gives for the head (none for
        a head not there). One script call per node, all at once."""
        notes: dict[str, list[bytes]] = defaultdict(list)
        for node, head in zip(posts[::2], posts[1::2], strict=True):
            notes[node.decode()].append(head + tails.get(head, b""))
        await asyncio.gather(*(self._post(node, batch) for node, batch in notes.items()))

    async def _post(self, node: str, notes: list[bytes]) -> None:
        """Post `notes` to node's own inbox, with a token: sent again after its reply was
        lost, it posts nothing twice (see slot_inbox_post.lua)."""
        keys = self._keys
        slot = (keys.own_inbox(node), keys.own_posted(node), keys.own_migrating(node))
        token = uuid.uuid4().hex[:16]
        await self._access.slot_script("inbox_post", slot, OWN_INBOX_TTL_MS, token, *notes)

    async def take(self, node: str, timeout: float) -> list[bytes]:
        """Node's notifications, oldest first: what its inbox holds, or, when empty, what
        arrives within `timeout` seconds (none when it is 0 or nothing came). An attempt whose
        reply was lost is not trusted: the next one puts what it took back first."""
        keys = self._slot_keys(node)
        inbox, taken = keys[0], keys[1]

        async def attempt() -> list[Any]:
            received = node in self._received
            self._received.discard(node)
            commands: list[Command] = [
                self._command("inbox_settle", keys, int(received), OWN_INBOX_TTL_MS)
            ]
            if timeout > 0:
                commands.append(("BLMOVE", inbox, taken, "LEFT", "RIGHT", timeout))
            commands.append(self._command("inbox_take", keys, OWN_INBOX_TTL_MS))
            if timeout > 0:
                replies = await self._blocking(inbox, commands, timeout)
            else:
                replies = await self._access.at(inbox).pipeline(commands)
            if any(_is_noscript(reply) for reply in replies):
                await self._load(inbox)
                raise replies[0] if _is_noscript(replies[0]) else replies[-1]
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise reply
            return replies

        replies = await self._access.retrying("wait", _again_after_repairs(attempt))
        self._received.add(node)
        moved = [replies[1]] if timeout > 0 and replies[1] is not None else []
        return [*moved, *replies[-1]]

    def _command(self, name: str, keys: Sequence[str], *args: str | bytes | int) -> Command:
        return ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    async def _load(self, key: str) -> None:
        """Load this module's scripts on the server of `key`'s slot (after a NOSCRIPT)."""
        commands = [("SCRIPT", "LOAD", self._scripts[name].source) for name in _OWN_SCRIPTS]
        await self._access.at(key).pipeline(commands)

    async def drop(self, nodes: Sequence[str]) -> None:
        """Delete the own inboxes of `nodes` (with their taken lists and post tokens), which
        left or were reaped."""

        async def drop_one(node: str) -> None:
            inbox, taken, _ = self._slot_keys(node)
            delete = ("DEL", inbox, taken, self._keys.own_posted(node))
            client = self._access.at(inbox)
            await self._access.retrying("leave", lambda: client.pipeline([delete]))

        await asyncio.gather(*(drop_one(node) for node in nodes))
        self._received.difference_update(nodes)

    async def flush(self) -> None:
        """Delete every own inbox of this grid, on every server."""
        for server in await self._access.servers():
            cursor = b"0"
            while True:
                scan = functools.partial(self._scan, server, cursor)
                cursor, found = await self._access.retrying("flush", scan)
                names = [name.decode() for name in found]
                await asyncio.gather(*map(self._delete, filter(self._keys.is_own_inbox_key, names)))
                if cursor == b"0":
                    break

    async def _scan(self, server: Pipelined, cursor: bytes) -> Any:
        pattern = self._keys.own_inbox_pattern()
        return await server.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)

    async def _delete(self, name: str) -> None:
        client = self._access.at(name)  # each name in a slot of its own
        await self._access.retrying("flush", lambda: client.execute("DEL", name))


_OWN_SCRIPTS = ("inbox_post", "inbox_settle", "inbox_take")
assert set(_OWN_SCRIPTS) <= set(SLOT_SCRIPTS)


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


def _again_after_repairs(
    attempt: Callable[[], Awaitable[list[Any]]],
) -> Callable[[], Awaitable[list[Any]]]:
    """`attempt`, made again at once after a NOSCRIPT (its scripts were just loaded) or a
    WRONGTYPE of the BLMOVE (garbage in the inbox, which the next attempt's `inbox_settle`
    deletes before it waits), so that neither counts as an outage."""

    async def once_more() -> list[Any]:
        for _ in range(2):
            try:
                return await attempt()
            except ReplyError as exc:
                if not (str(exc).startswith("NOSCRIPT") or str(exc).startswith("WRONGTYPE")):
                    raise
        return await attempt()

    return once_more
