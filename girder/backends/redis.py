"""`RedisBackend`: grid state in Redis, shared by processes on many machines.

Selected by `redis://`, `rediss://` (TLS) and `unix://` URLs; credentials, database and TLS
options come from the URL (see `girder.backends.resp`, the small client it talks through).
Every atomic primitive is one Lua script from `girder/backends/lua/`, loaded with SCRIPT LOAD
and run by SHA (reloaded after a NOSCRIPT, e.g. when the server restarted), so submit, claim and
complete are one round trip each.
Key names live in `redis_keys`.

The two waits never depend on pub/sub. A notification is an entry in the node's inbox list; a
waiter takes entries out of the inbox into its "taken" list (blocking with BLMOVE when the inbox
is empty), and the next wait drops `taken` if the reply arrived or puts it back in front of the
inbox if it did not: whatever was posted before it listened is seen at once, and a reply lost with
a cancelled wait is delivered later rather than never. A push onto a node's work list or volunteer
queue leaves a token on its "wake" list; a token lost with a cancelled BLPOP costs only a wake-up.
Blocking calls run on a separate connection pool so they never hold up other commands. Leases are
kept in server time (TIME inside the scripts).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from girder.backends.base import (
    Assignment,
    Claimed,
    Completion,
    NewRequest,
    NodeInfo,
    NodeKind,
    Notification,
    Reaped,
    RequestState,
    Submitted,
)
from girder.backends.redis_keys import (
    DONE,
    F_OUTCOME,
    F_PAYLOAD,
    F_STATUS,
    PENDING,
    RUNNING,
    RedisKeys,
)
from girder.backends.resp import Command, RedisClient, ReplyError, RespError, parse_url
from girder.config import Settings
from girder.errors import BackendError, ConfigurationError

_log = structlog.get_logger("girder")

_STATES = {
    PENDING.encode(): RequestState.PENDING,
    RUNNING.encode(): RequestState.RUNNING,
    DONE.encode(): RequestState.DONE,
}
_SCRIPTS = (
    "submit",
    "claim",
    "complete",
    "acknowledge",
    "take",
    "volunteer",
    "hand_out",
    "trim",
    "steal",
    "join",
    "heartbeat",
    "leave",
    "reap",
    "nodes",
    "members",
)
_MIN_SERVER = (6, 2)
"""LPOP with a count and LPOS need Redis 6.2."""

_REPLY_MARGIN = 5.0
"""Seconds a BLPOP may overrun its own timeout before the server counts as unreachable."""


def mask_url(url: str) -> str:
    """`url` with any password (in the user part or the query) replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    source: str
    sha: str


def _load_scripts(keys: RedisKeys) -> dict[str, _Script]:
    """Each script is the key-name prelude, the shared helpers, then its own body."""
    folder = resources.files("girder.backends").joinpath("lua")
    head = keys.lua_prelude() + folder.joinpath("common.lua").read_text()
    scripts = {}
    for name in _SCRIPTS:
        source = head + folder.joinpath(f"{name}.lua").read_text()
        scripts[name] = _Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    return scripts


def _text(value: bytes) -> str:
    return value.decode()


def _notifications(entries: list[bytes]) -> list[Notification]:
    """Decode inbox entries (`<len(key)>:<key><outcome>`); drop any that someone mangled."""
    notes = []
    for entry in entries:
        size, _, rest = entry.partition(b":")
        try:
            length = int(size)
            if not 0 <= length <= len(rest):
                raise ValueError(length)
            key = rest[:length].decode()
        except ValueError:
            _log.warning("malformed notification dropped", entry=entry[:100])
            continue
        notes.append(Notification(key, rest[length:]))
    return notes


class RedisBackend:
    """Grid state in one Redis server (or one slot of a cluster)."""

    def __init__(self, url: str, *, settings: Settings | None = None) -> None:
        self.url = mask_url(url)
        self.round_trips = True
        self.shared = True
        self._keys = RedisKeys((settings or Settings()).key_prefix)
        self._scripts = _load_scripts(self._keys)
        self._received: set[str] = set()
        """Nodes whose last blocking wait's reply arrived (the next wait drops `taken`)."""
        try:
            address = parse_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self.url!r}: {exc}") from exc
        self._redis = RedisClient(address)

    async def connect(self) -> None:
        with self._errors("connect"):
            info = (await self._redis.execute("INFO", "server")).decode()
            found = re.search(r"^redis_version:(\S+)", info, re.MULTILINE)
            release = found.group(1) if found else "0"
            version = tuple(int(part) for part in release.split(".")[:2] if part.isdigit())
            if version < _MIN_SERVER:
                raise ConfigurationError(
                    f"Redis at {self.url} is version {release}; girder needs 6.2+"
                )
            await self._load_scripts()

    async def _load_scripts(self) -> None:
        commands = [("SCRIPT", "LOAD", script.source) for script in self._scripts.values()]
        for reply in await self._redis.pipeline(commands):
            if isinstance(reply, ReplyError):
                raise reply

    async def close(self) -> None:
        self._redis.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, name: str, *args: str | bytes | int | float) -> Command:
        """The EVALSHA command of script `name`."""
        anchor = self._keys.leases  # declares the grid's hash slot to a cluster
        return ("EVALSHA", self._scripts[name].sha, 1, anchor, *args)

    async def _run(self, name: str, *args: str | bytes | int | float) -> Any:
        """Run one script by SHA (one round trip), loading it again if the server forgot it."""
        with self._errors(name):
            try:
                return await self._redis.execute(*self._call(name, *args))
            except ReplyError as exc:
                if not _is_noscript(exc):
                    raise
                await self._load_scripts()
                return await self._redis.execute(*self._call(name, *args))

    async def _blocking(self, commands: list[Command], timeout: float) -> list[Any]:
        """Commands that block up to `timeout` seconds, on a connection of their own."""
        try:
            async with asyncio.timeout(timeout + _REPLY_MARGIN):
                return await self._redis.blocking(commands)
        except TimeoutError as exc:
            raise BackendError(f"Redis at {self.url} did not answer a wait in time") from exc

    async def _pop_token(self, bell: str, timeout: float) -> bool:
        """Take the token from `bell`, waiting up to `timeout` seconds for one."""
        with self._errors("wait"):
            if timeout <= 0:
                return await self._redis.execute("LPOP", bell) is not None
            [reply] = await self._blocking([("BLPOP", bell, timeout)], timeout)
        _raise_errors([reply])
        return reply is not None

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Raise `BackendError` for whatever Redis or the connection raises while doing `what`."""
        try:
            yield
        except RespError as exc:
            raise BackendError(f"Redis {what} failed at {self.url}: {exc}") from exc

    # -- requests ---------------------------------------------------------------------------------

    async def submit(
        self,
        node: str,
        requests: Sequence[NewRequest],
        *,
        into: str,
        on_top: bool,
        waiter_key: str | None = None,
        dispatch: bool = False,
    ) -> list[Submitted]:
        submitted, _ = await self.submit_and_claim(
            node, requests, into=into, on_top=on_top, waiter_key=waiter_key, dispatch=dispatch
        )
        return submitted

    async def submit_and_claim(
        self,
        node: str,
        requests: Sequence[NewRequest],
        *,
        into: str,
        on_top: bool,
        waiter_key: str | None = None,
        dispatch: bool = False,
        claim: int = 0,
    ) -> tuple[list[Submitted], list[Claimed]]:
        if not requests and not claim:
            return [], []
        args: list[str | bytes | int] = [
            node,
            into,
            int(on_top),
            int(waiter_key is not None),
            waiter_key or "",
            int(dispatch),
            claim,
        ]
        for request in requests:
            args += (request.key, request.payload)
        replies, flat = await self._run("submit", *args)
        found: list[Submitted] = []
        for request, reply in zip(requests, replies, strict=True):
            if reply[0] == 1:
                found.append(Submitted(request.key, outcome=reply[1]))
            elif reply[0] == 2:
                found.append(Submitted(request.key, cycle=tuple(map(_text, reply[1:]))))
            else:
                found.append(Submitted(request.key))
        return found, _claimed(flat)

    async def claim(self, node: str) -> Claimed | None:
        reply = await self._run("claim", node)
        return None if reply is None else Claimed(reply[0].decode(), reply[1])

    async def complete(self, node: str, key: str, outcome: bytes, *, cache: bool) -> None:
        await self._run("complete", node, 0, "", key, outcome, int(cache))

    async def complete_and_claim(
        self,
        node: str,
        completions: Sequence[Completion],
        *,
        claim: int,
        volunteer_at: str | None = None,
    ) -> list[Claimed]:
        args: list[str | bytes | int] = [node, claim, volunteer_at or ""]
        for completion in completions:
            args += (completion.key, completion.outcome, int(completion.cache))
        return _claimed(await self._run("complete", *args))

    async def take_notifications(self, node: str, timeout: float) -> list[Notification]:
        """One round trip: settle the previous wait's `taken` list, block until the inbox has
        an entry (moving it to `taken`), then take the rest of the inbox the same way."""
        received = node in self._received
        self._received.discard(node)
        commands = [self._call("acknowledge", node, int(received))]
        if timeout > 0:
            inbox, taken = self._keys.inbox(node), self._keys.taken(node)
            commands.append(("BLMOVE", inbox, taken, "LEFT", "RIGHT", timeout))
        commands.append(self._call("take", node))
        with self._errors("wait"):
            if timeout > 0:
                replies = await self._blocking(commands, timeout)
            else:
                replies = await self._redis.pipeline(commands)
            if any(isinstance(reply, ReplyError) and _is_noscript(reply) for reply in replies):
                await self._load_scripts()  # the server restarted: `taken` comes next time
                return []
        _raise_errors(replies)
        self._received.add(node)
        moved = [replies[1]] if timeout > 0 and replies[1] is not None else []
        return _notifications(moved + replies[-1])

    async def wait_for_work(self, node: str, timeout: float) -> None:
        await self._pop_token(self._keys.wake(node), timeout)

    async def wait_and_claim(self, node: str, timeout: float) -> Claimed | None:
        """BLPOP the wake token and claim in one pipeline: Redis runs the claim the moment the
        token arrives, sparing the worker a round trip."""
        commands = [("BLPOP", self._keys.wake(node), timeout), self._call("claim", node)]
        with self._errors("wait"):
            _, reply = await self._blocking(commands, timeout)
        if isinstance(reply, ReplyError):  # e.g. NOSCRIPT after a restart: claim the slow way
            return await self.claim(node)
        return None if reply is None else Claimed(reply[0].decode(), reply[1])

    async def state(self, key: str) -> RequestState:
        with self._errors("state"):
            status = await self._redis.execute("HGET", self._keys.record(key), F_STATUS)
        return RequestState.UNKNOWN if status is None else _STATES[status]

    async def result(self, key: str) -> bytes | None:
        with self._errors("result"):
            status, outcome = await self._redis.execute(
                "HMGET", self._keys.record(key), F_STATUS, F_OUTCOME
            )
        return outcome if status == DONE.encode() else None

    async def payloads(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        commands = [("HGET", self._keys.record(key), F_PAYLOAD) for key in keys]
        with self._errors("payloads"):
            replies = await self._redis.pipeline(commands)
        _raise_errors(replies)
        return replies

    # -- distribution -----------------------------------------------------------------------------

    async def volunteer(self, distributor: str, node: str) -> None:
        await self._run("volunteer", distributor, node)

    async def hand_out(self, distributor: str, *, even_share: bool = False) -> list[Assignment]:
        flat = await self._run("hand_out", distributor, int(even_share))
        return [Assignment(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def trim(self, distributor: str, members: Sequence[str]) -> int:
        if not members:
            return 0
        moved: int = await self._run("trim", distributor, *members)
        return moved

    async def steal(self, distributor: str, member: str, count: int) -> int:
        moved: int = await self._run("steal", distributor, member, count)
        return moved

    async def lengths(self, nodes: Sequence[str]) -> list[int]:
        if not nodes:
            return []
        with self._errors("lengths"):
            replies = await self._redis.pipeline([("LLEN", self._keys.work(n)) for n in nodes])
        _raise_errors(replies)
        return replies

    async def volunteers(self, distributor: str) -> list[str]:
        with self._errors("volunteers"):
            queue = await self._redis.execute("LRANGE", self._keys.volunteers(distributor), 0, -1)
        return [node.decode() for node in queue]

    # -- membership and recovery ------------------------------------------------------------------

    async def join(self, node: str, kind: NodeKind, distributor: str | None, ttl: float) -> None:
        has_distributor = int(distributor is not None)
        await self._run("join", node, kind.value, has_distributor, distributor or "", _ms(ttl))

    async def heartbeat(self, node: str, ttl: float) -> bool:
        return bool(await self._run("heartbeat", node, _ms(ttl)))

    async def leave(self, node: str) -> int:
        count: int = await self._run("leave", node)
        return count

    async def reap(self, reaper: str, max_crashes: int) -> Reaped:
        dead, requeued, crashed_out = await self._run("reap", reaper, max_crashes)
        return Reaped(tuple(map(_text, dead)), requeued, tuple(map(_text, crashed_out)))

    async def nodes(self) -> list[NodeInfo]:
        rows = await self._run("nodes")
        return sorted(
            (
                NodeInfo(
                    node.decode(),
                    NodeKind(kind.decode()),
                    None if distributor is None else distributor.decode(),
                    bool(alive),
                    work,
                    running,
                )
                for node, kind, distributor, alive, work, running in rows
            ),
            key=lambda info: info.node,
        )

    async def members(self, distributor: str) -> list[str]:
        return [node.decode() for node in await self._run("members", distributor)]

    async def cache_size(self) -> int:
        with self._errors("cache_size"):
            return int(await self._redis.execute("GET", self._keys.cached) or 0)

    async def flush(self) -> None:
        with self._errors("flush"):
            cursor = b"0"
            while True:
                cursor, found = await self._redis.execute(
                    "SCAN", cursor, "MATCH", self._keys.pattern(), "COUNT", 1000
                )
                if found:
                    await self._redis.execute("UNLINK", *found)
                if cursor == b"0":
                    return


def _claimed(flat: list[bytes]) -> list[Claimed]:
    """Claimed requests from a script's {key1, payload1, key2, payload2, ...}."""
    return [Claimed(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2)]


def _is_noscript(error: ReplyError) -> bool:
    return str(error).startswith("NOSCRIPT")


def _raise_errors(replies: Sequence[Any]) -> None:
    """Raise the first error reply among `replies` as a `BackendError`."""
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise BackendError(f"Redis replied with an error: {reply}")


def _ms(seconds: float) -> int:
    """A lease in whole milliseconds (at least 1)."""
    return max(1, round(seconds * 1000))
