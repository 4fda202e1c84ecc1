"""`RedisBackend`: grid state in Redis, shared by processes on many machines.

Selected by `redis://`, `rediss://` (TLS) and `unix://` URLs; credentials, database and TLS
options come from the URL (see `girder.backends.resp`, the small client it talks through).
`redis+cluster://host:port[,host:port...]` puts the grid in one slot of a Redis Cluster (see
`girder.backends.cluster`); `redis+sentinel://host:port[,host:port...]/service-name` on the
primary that Redis Sentinel names (see `girder.backends.sentinel`); their `rediss+` forms talk
TLS to every node.
Every atomic primitive is one Lua script from `girder/backends/lua/`, loaded with SCRIPT LOAD
and run by SHA (reloaded after a NOSCRIPT, e.g. when the server restarted), so submit, claim and
complete are one round trip each. Key names live in `redis_keys`, script arguments and reply
codes in `redis_scripts`. Blobs are the exception: their bytes live in a slot of their own, so a
put or a sweep of one is a few ordered steps, one script per slot (see `redis_blobs`); and so
are cached results with `Settings.spread_results`, moved to their own keys' slots in a few
ordered steps too (see `redis_results`), and notifications for nodes whose inbox is in their own
slot (`Settings.spread_notifications`), reported by the grid's scripts and posted there by the
caller (see `redis_inboxes`).

Every operation is safe to send again: the scripts that claim work are journaled by a token per
call (a resent call returns the first call's reply), and the others change nothing when repeated.
So while the server cannot be reached (a restart, a lost reply, a cut connection) an operation
waits and tries again with backoff, logging once per outage, until the server answers or
`Settings.outage_timeout` runs out: an outage is the grid's problem, never a request's outcome.
A server that refuses writes for lack of memory is not an outage: that is a `BackendError` at
once, saying so.

The two waits never depend on pub/sub. A notification is an entry in the node's inbox list; a
waiter takes entries out of the inbox into its "taken" list (blocking with BLMOVE when the inbox
is empty), and the next wait drops `taken` if the reply arrived or puts it back in front of the
inbox if it did not: whatever was posted before it listened is seen at once, and a reply lost with
a cancelled wait is delivered later rather than never. A push onto a node's work list or volunteer
queue leaves a token on its "wake" list; a token lost with a cancelled BLPOP costs only a wake-up.
Blocking calls run on a separate connection pool so they never hold up other commands. Leases are
kept in the grid's clock: Redis server time (TIME inside the scripts) that advances at most two
heartbeat intervals between two heartbeats, so a stalled server does not make live nodes dead.

A cached result is its done request record, and the grid's only state with an expiry (its
TTL; the journal of a `cache_clear` expires too, and is fine to lose): under a `volatile-*`
`maxmemory-policy` Redis evicts cached results and nothing else. Its loss makes the key
unknown, so the next request computes it again. `cache_stats` and `cache_clear` SCAN the
records (nothing on the hot path keeps an index), and with `spread_results` the cached results
moved to their own keys' slots too (see `redis_results`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from girder.backends import redis_servers
from girder.backends.base import (
    Assignment,
    Beat,
    CacheStats,
    CacheUsage,
    Cancelling,
    Claimed,
    Completion,
    Event,
    EventKind,
    NewRequest,
    NodeInfo,
    NodeKind,
    Notification,
    Reaped,
    RequestState,
    ServerLoad,
    Submitted,
)
from girder.backends.cluster import SCHEMES as CLUSTER_SCHEMES
from girder.backends.cluster import ClusterClient, SlotClient, parse_cluster_url
from girder.backends.redis_access import RedisAccess
from girder.backends.redis_blobs import RedisBlobs
from girder.backends.redis_inboxes import OwnInboxes
from girder.backends.redis_keys import (
    DONE,
    F_OUTCOME,
    F_PAYLOAD,
    F_STATUS,
    PENDING,
    RECORD,
    RUNNING,
    RedisKeys,
    chunk_fields,
    unchunked,
)
from girder.backends.redis_results import SpreadResults
from girder.backends.redis_scripts import (
    MAX_SCRIPT_BYTES,
    MAX_SUBMIT_KEYS,
    SUBMITTED_CYCLE,
    SUBMITTED_DONE,
    SUBMITTED_LOOK_AGAIN,
    Script,
    build_scripts,
    build_slot_scripts,
)
from girder.backends.resp import (
    Command,
    ConnectionLost,
    Pipelined,
    RedisClient,
    ReplyError,
    ReplyLost,
    parse_url,
)
from girder.backends.sentinel import SCHEMES as SENTINEL_SCHEMES
from girder.backends.sentinel import SentinelClient, parse_sentinel_url
from girder.config import Settings
from girder.errors import BackendError, BackendFull, ConfigurationError
from girder.log import get_logger

_log = get_logger()

T = TypeVar("T")

_STATES = {
    PENDING.encode(): RequestState.PENDING,
    RUNNING.encode(): RequestState.RUNNING,
    DONE.encode(): RequestState.DONE,
}
_MIN_SERVER = (6, 2)
"""LPOP with a count and LPOS need Redis 6.2."""

_OUTAGE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")
"""Error replies of a server that cannot serve right now but will: waited out like an outage."""

_CUT_SHORT = "ERR Script attempted to access a non local key"
"""The error of a script that touched a key the node no longer holds: the grid's slot is being
migrated, and the key has moved. The script stopped there, its earlier writes made: it is
waited out like an outage, and counted as writes that may be half made (see `heartbeat`)."""

_RUN_ID = re.compile(rb"^run_id:(\w+)", re.MULTILINE)
"""The server's run id in `INFO server`: a new one for every start of a server process."""

_CONNECT_TRIES = 5
"""Attempts of `connect` whose reply was lost, before it gives up."""

_SAFE_POLICIES = ("volatile-lru", "volatile-lfu", "volatile-ttl", "volatile-random")
"""Policies that evict only keys with an expiry: cached results (see the module docstring)."""

_warned_policies: set[tuple[str, str]] = set()
"""(backend URL, policy) already warned about in this process."""

_SCAN_COUNT = 1000
"""Keys per SCAN step (and per script call) of `cache_stats` and `cache_clear`."""

_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0
"""Backoff between attempts while the server cannot be reached, in seconds."""


def mask_url(url: str) -> str:
    """`url` with any password (in the user part, or `password` / `sentinel_password` in the
    query) replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_secret(name) for name, _ in pairs):
        query = urlencode([(k, "***" if _secret(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secret(name: str) -> bool:
    """Whether a URL's query option holds a password."""
    return name == "password" or name.endswith("_password")


def _text(value: bytes) -> str:
    return value.decode()


def _notifications(entries: list[bytes]) -> list[Notification]:
    """Decode inbox entries: notifications (`<len(key)>:<key><outcome>`), partial answers
    (`~<len(key)>:<key><outcome>`) and cancellation notices (`!<len(key)>:<key><job>`); drop
    any that someone mangled."""
    notes = []
    for entry in entries:
        notice = entry[:1] == b"!"
        partial = entry[:1] == b"~"
        size, _, rest = entry[notice or partial :].partition(b":")
        try:
            length = int(size)
            if not 0 <= length <= len(rest):
                raise ValueError(length)
            key = rest[:length].decode()
            job = rest[length:].decode() if notice else None
        except ValueError:
            _log.warning("malformed notification dropped", entry=entry[:100])
            continue
        if job is not None:
            notes.append(Notification(key, b"", cancelled_by=job))
        else:
            notes.append(Notification(key, rest[length:], partial=partial))
    return notes


class _Outage:
    """Whether the server is unreachable now, so that an outage is logged once, not per call."""

    def __init__(self, url: str, timeout: float | None, longest_delay: float) -> None:
        self._url = url
        self._timeout = timeout
        self._longest_delay = longest_delay
        self._since: float | None = None

    def failed(self, started: float, what: str, error: Exception) -> float:
        """Note a failed attempt of an operation begun at `started`; the delay before the
        next attempt. Raises `BackendError` once the operation waited `timeout` seconds."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
            _log.warning(
                "Redis unreachable; operations wait and retry",
                backend=self._url,
                operation=what,
                error=str(error),
            )
        if self._timeout is not None and now - started >= self._timeout:
            raise BackendError(
                f"Redis {what} failed at {self._url}: unreachable for {now - started:.1f} s "
                f"(GIRDER_OUTAGE_TIMEOUT): {error}"
            ) from error
        return min(self._longest_delay, max(_RETRY_FIRST, (now - started) / 2))

    def ended(self) -> None:
        if self._since is not None:
            _log.warning(
                "Redis reachable again",
                backend=self._url,
                outage_seconds=round(time.monotonic() - self._since, 2),
            )
            self._since = None


class _Tokens:
    """Call tokens of journaled scripts: per node, the last one issued and the ones whose reply
    has not arrived yet (the oldest of those tells the script which journal entries to keep)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._awaited: dict[str, set[int]] = {}

    def issue(self, node: str) -> tuple[int, int]:
        """A new token of `node` and the oldest token of `node` still awaited; `settle` it."""
        token = self._last[node] = self._last.get(node, 0) + 1
        awaited = self._awaited.get(node)
        if awaited is None:
            awaited = self._awaited[node] = set()
        awaited.add(token)
        return token, self.oldest(node)

    def oldest(self, node: str) -> int:
        """The oldest token of `node` still awaited, or the next one when none is: every
        journal entry of an older token is of no more use."""
        awaited = self._awaited.get(node)
        return min(awaited) if awaited else self._last.get(node, 0) + 1

    def settle(self, node: str, token: int) -> None:
        """The call of `token` is over (its reply arrived, or it was given up)."""
        awaited = self._awaited[node]
        awaited.discard(token)
        if not awaited:
            del self._awaited[node]


class RedisBackend:
    """Grid state in one Redis server (or one slot of a cluster)."""

    def __init__(self, url: str, *, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.url = mask_url(url)
        self.round_trips = True
        self.shared = True
        self._keys = RedisKeys(settings.key_prefix)
        tick = max(1, round(2000 * settings.heartbeat_interval))
        self._events = settings.events
        events_max = settings.events_max if settings.events else 0
        watch_ms = max(1, round(1000 * settings.events_watch))
        self._scripts: dict[str, Script] = build_scripts(self._keys, tick, events_max, watch_ms)
        self._received: set[str] = set()
        """Nodes whose last blocking wait's reply arrived (the next wait drops `taken`)."""
        self._tokens = _Tokens()
        self._cut_short = 0
        """Scripts of this process cut short by a migration of the grid's slot (`_CUT_SHORT`)."""
        self._cut_short_seen: dict[str, int] = {}
        """Per node, `_cut_short` as its previous heartbeat saw it."""
        self._server_seen: dict[str, bytes] = {}
        """Per node, the run id of the server that answered its join or previous heartbeat."""
        # A node must try a few times per lease: one that comes back later than a lease after
        # the server does is declared dead by those that came back first.
        longest = max(_RETRY_FIRST, min(_RETRY_MAX, settings.heartbeat_ttl / 4))
        self._outage = _Outage(self.url, settings.outage_timeout, longest)
        self._redis: RedisClient | ClusterClient | SentinelClient
        scheme = url.partition("://")[0]
        try:
            if scheme in CLUSTER_SCHEMES:
                self._redis = ClusterClient(parse_cluster_url(url), anchor=self._keys.leases)
            elif scheme in SENTINEL_SCHEMES:
                self._redis = SentinelClient(parse_sentinel_url(url))
            else:
                self._redis = RedisClient(parse_url(url))
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self.url!r}: {exc}") from exc
        self._slot_scripts = build_slot_scripts()
        access = RedisAccess(
            run=self._run,
            journaled=lambda name, node, *args: self._journaled(name, node, True, *args),
            # Looked up at each call, so that a test may wrap the method on this backend.
            slot_script=lambda *args, **options: self._slot_script(*args, **options),  # noqa: PLW0108
            slot_scripts=self._slot_scripts_at,
            commands=self._commands_at,
            retrying=self._retrying,
            at=self._at,
            servers=self._servers,
            error=lambda what, error: _reply_error(self.url, what, error),
        )
        self._access = access
        self._blobs = RedisBlobs(self._keys, access)
        self._results: SpreadResults | None = None
        """Cached results moved to their own keys' slots: this process moves those it
        completes with `Settings.spread_results`; without it, it looks for, counts and clears
        those others moved once it saw the grid has some (`_saw_results_moved`)."""
        if settings.spread_results:
            self._results = SpreadResults(self._keys, access)
        self._inboxes = OwnInboxes(self._keys, access, self._slot_scripts, self._blocking_at)
        """Notifications in the nodes' own slots: this process's nodes are told there with
        `Settings.spread_notifications`, and every process posts there for nodes that are."""
        self._own_inbox = settings.spread_notifications
        self._watch_seconds = settings.events_watch
        self._watched_until = 0.0
        """Until when (monotonic) the grid's events are known to be watched: by this process's
        latest read of them, or by a heartbeat that found them watched."""

    async def connect(self) -> None:
        """Check the server and load the scripts. A server that cannot be reached at all is a
        `BackendError` at once (a wrong URL should not wait); a reply lost on the way is
        asked again; a server that answers but is not ready yet (LOADING after a restart,
        BUSY, ...) is waited out like an outage, and so is a primary out of reach while its
        cluster or sentinels answer (a failover under way)."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                with self._errors("connect"):
                    await self._check_server()
                    await self._load_scripts()
                break
            except BackendError as exc:
                cause = exc.__cause__
                if isinstance(cause, ReplyError) and str(cause).startswith(_OUTAGE_REPLIES):
                    await asyncio.sleep(self._outage.failed(started, "connect", cause))
                    continue
                if isinstance(cause, ConnectionLost) and self._primary_down():
                    await asyncio.sleep(self._outage.failed(started, "connect", cause))
                    continue
                attempt += 1
                if not isinstance(cause, ReplyLost) or attempt == _CONNECT_TRIES:
                    raise
        self._outage.ended()
        await self._check_layout()
        await self._check_eviction_policy()
        if self._results is None:
            self._saw_results_moved(
                await self._execute("connect", "EXISTS", self._keys.results_dropped)
            )

    async def _check_layout(self) -> None:
        """Refuse a grid that a sharded process keeps (`Settings.layout`): its records are not
        in the grid's slot, where this one's scripts would look."""
        layout = await self._execute("connect", "GET", self._keys.layout)
        if layout is not None:
            raise ConfigurationError(
                f"the grid {self._keys.prefix!r} at {self.url} keeps its state in the "
                f"{layout.decode(errors='replace')!r} layout: set GIRDER_LAYOUT to match "
                "(or flush it)"
            )

    def _saw_results_moved(self, moved: object) -> None:
        """Some process of the grid moves cached results to their own slots (`moved`: the
        reply of an EXISTS of `resultsdropped`): look for them there too, count and clear
        them, even without `spread_results` here."""
        if moved == 1 and self._results is None:
            self._results = SpreadResults(self._keys, self._access, moves=False)
            _log.info("cached results found in their own slots: looking there too")

    def _primary_down(self) -> bool:
        """Whether the primary is out of reach although the cluster or the sentinels answered
        (a failover under way): then connecting waits for the replica that will replace it,
        as any operation does, instead of failing as for a wrong URL."""
        return isinstance(self._redis, ClusterClient | SentinelClient) and self._redis.answered

    async def _check_server(self) -> None:
        info = (await self._redis.execute("INFO", "server")).decode()
        found = re.search(r"^redis_version:(\S+)", info, re.MULTILINE)
        release = found.group(1) if found else "0"
        version = tuple(int(part) for part in release.split(".")[:2] if part.isdigit())
        if version < _MIN_SERVER:
            raise ConfigurationError(f"Redis at {self.url} is version {release}; girder needs 6.2+")
        mode = re.search(r"^redis_mode:(\S+)", info, re.MULTILINE)
        self._check_mode(mode.group(1) if mode else "standalone")

    def _check_mode(self, mode: str) -> None:
        """Refuse a server the URL's scheme cannot drive. A node of a Redis Cluster reached
        through `redis://` would serve the grid while it owns the grid's slot, then answer MOVED
        after a failover or a resharding, and at once for blobs, which live in other slots."""
        if mode == "cluster" and not isinstance(self._redis, ClusterClient):
            raise ConfigurationError(
                f"Redis at {self.url} is a node of a Redis Cluster: connect with "
                "redis+cluster://host:port[,host:port...] (any of its nodes will do)"
            )
        if mode == "sentinel":
            raise ConfigurationError(
                f"Redis at {self.url} is a Sentinel, not a server: connect with "
                "redis+sentinel://host:port[,host:port...]/service-name"
            )

    async def _check_eviction_policy(self) -> None:
        """Warn (once per process) when the server may evict the grid's own state (queues,
        records, leases), or will refuse writes when full rather than evict cached results."""
        commands: list[Command] = [("CONFIG", "GET", "maxmemory-policy")]
        commands.append(("CONFIG", "GET", "maxmemory"))
        try:
            replies = await self._redis.pipeline(commands)
        except ConnectionLost:
            return
        found: dict[bytes, bytes] = {}
        for reply in replies:  # an error reply: CONFIG may be renamed or denied by an ACL
            if isinstance(reply, list) and len(reply) == 2:
                found[reply[0]] = reply[1]
        if b"maxmemory-policy" not in found:
            return
        policy = found[b"maxmemory-policy"].decode()
        limited = found.get(b"maxmemory", b"0") != b"0"
        if policy in _SAFE_POLICIES or (policy == "noeviction" and not limited):
            return
        if (self.url, policy) in _warned_policies:
            return
        _warned_policies.add((self.url, policy))
        if policy.startswith("allkeys"):
            message = (
                "Redis may evict the grid's state (queues, records, leases); set "
                "maxmemory-policy to volatile-lru so that it evicts only cached results"
            )
        else:
            message = (
                "Redis refuses writes once maxmemory is reached instead of evicting cached "
                "results; set maxmemory-policy to volatile-lru"
            )
        _log.warning(message, backend=self.url, policy=policy)

    async def _load_scripts(self) -> None:
        commands = [("SCRIPT", "LOAD", script.source) for script in self._scripts.values()]
        for reply in await self._redis.pipeline(commands):
            if isinstance(reply, ReplyError):
                raise reply

    async def close(self) -> None:
        if self._results is not None:
            await self._results.close()
        self._redis.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, name: str, *args: str | bytes | int | float) -> Command:
        """The EVALSHA command of script `name` with its arguments in declared order."""
        keys = self._keys
        # Both name the grid's hash slot to a cluster; the second, never written, makes a
        # migration of that slot answer TRYAGAIN or ASK before the script runs (redis_keys).
        return ("EVALSHA", self._scripts[name].sha, 2, keys.leases, keys.migrating, *args)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` until the server answers it: connection failures and the replies of a
        server that is not ready are waited out (see `_Outage`); a NOSCRIPT reloads the
        scripts; other error replies raise `BackendError`."""
        started = time.monotonic()
        reload = False
        while True:
            try:
                if reload:  # in the attempt: the reload's reply too may be lost
                    await self._load_scripts()
                    reload = False
                result = await attempt()
            except ConnectionLost as exc:
                await asyncio.sleep(self._outage.failed(started, what, exc))
                continue
            except ReplyError as exc:
                if _is_noscript(exc):
                    reload = True
                    continue
                if str(exc).startswith(_CUT_SHORT):
                    self._cut_short += 1
                elif not str(exc).startswith(_OUTAGE_REPLIES):
                    raise _reply_error(self.url, what, exc) from exc
                await asyncio.sleep(self._outage.failed(started, what, exc))
                continue
            self._outage.ended()
            return result

    async def _execute(self, what: str, *command: str | bytes | int | float) -> Any:
        """One command, retried through outages."""
        return await self._retrying(what, lambda: self._redis.execute(*command))

    async def _run(self, name: str, *args: str | bytes | int | float) -> Any:
        """Run one script by SHA (one round trip), retried through outages (every script is
        safe to repeat, see `_journaled`)."""
        command = self._call(name, *args)
        return await self._retrying(name, lambda: self._redis.execute(*command))

    async def _slot_script(
        self,
        name: str,
        keys: Sequence[str],
        *args: str | bytes | int | float,
        again: bool = False,
    ) -> Any:
        """Run a script of a slot of its own (`SLOT_SCRIPTS`: a blob's, a moved result's) by
        SHA, sending its source on a NOSCRIPT (a server that never saw it, or restarted),
        retried through outages. With `again`, the script's first argument says whether the
        call is sent again ('0' the first time, '1' after): a journaled record's step (see
        `redis_records`)."""
        script = self._slot_scripts[name]
        client = self._at(keys[0])
        attempts = 0

        async def attempt() -> Any:
            nonlocal attempts
            sent = (str(min(attempts, 1)), *args) if again else args
            attempts += 1
            [reply] = await client.pipeline([("EVALSHA", script.sha, len(keys), *keys, *sent)])
            if isinstance(reply, ReplyError) and _is_noscript(reply):
                [reply] = await client.pipeline([("EVAL", script.source, len(keys), *keys, *sent)])
            if isinstance(reply, ReplyError):
                raise reply
            return reply

        return await self._retrying(name, attempt)

    async def _slot_scripts_at(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[str | bytes | int]]]
    ) -> list[Any]:
        """Script `name` of a slot of its own once per (keys, args) of `calls`, one pipeline
        per server (per primary of a cluster) instead of a round trip each; a call redirected
        (MOVED, ASK) or refused with NOSCRIPT goes again alone (`_slot_script`). With `again`
        among its arguments (see `_slot_script`), a resend after a lost reply says so. Retried
        through outages; an error reply raises."""
        script = self._slot_scripts[name]
        again = script.spec.args[:1] == ("again",)
        replies: list[Any] = [None] * len(calls)
        groups = self._by_server([keys[0] for keys, _ in calls])

        async def alone(index: int, reply: Any, sent_again: bool) -> Any:
            """The reply of call `index`, sent again alone if it was redirected or its
            server lacked the script (it did not run)."""
            if isinstance(reply, ReplyError) and (
                _is_noscript(reply) or str(reply).startswith(("MOVED", "ASK"))
            ):
                keys, args = calls[index]
                if again and sent_again:  # the attempt whose reply was lost may have run it
                    reply = await self._slot_script(name, keys, "1", *args)
                else:
                    reply = await self._slot_script(name, keys, *args, again=again)
            if isinstance(reply, ReplyError):
                raise reply
            return reply

        async def run(client: Pipelined, indexes: list[int]) -> None:
            attempts = 0

            async def attempt() -> None:
                nonlocal attempts
                sent_again = attempts > 0
                attempts += 1
                commands = []
                for index in indexes:
                    keys, args = calls[index]
                    flag: tuple[str, ...] = ("1" if sent_again else "0",) if again else ()
                    commands.append(("EVALSHA", script.sha, len(keys), *keys, *flag, *args))
                got = await client.pipeline(commands)
                for index, reply in zip(indexes, got, strict=True):
                    replies[index] = await alone(index, reply, sent_again)

            await self._retrying(name, attempt)

        await asyncio.gather(*(run(client, indexes) for client, indexes in groups))
        return replies

    def _by_server(self, keys: Sequence[str]) -> list[tuple[Pipelined, list[int]]]:
        """The positions of `keys` grouped by the server that holds each (see
        `ClusterClient.by_primary`; one group on one server)."""
        if not keys:
            return []
        if isinstance(self._redis, ClusterClient):
            return self._redis.by_primary(keys)
        return [(self._redis, list(range(len(keys))))]

    async def _commands_at(self, what: str, calls: Sequence[tuple[str, Command]]) -> list[Any]:
        """Each (key, command) of `calls` that reads or writes `key` alone, one pipeline per
        server; a command redirected (MOVED, ASK) goes again alone, through the client of its
        key's slot. Retried through outages; error replies are returned (garbage of the wrong
        type is the caller's to judge), but for the replies of a server that will answer later,
        which are waited out."""
        replies: list[Any] = [None] * len(calls)

        async def alone(index: int, reply: Any) -> Any:
            """The reply of call `index`, sent again alone if it was redirected; the reply of
            a server that will answer later raises (the attempt is made again)."""
            if isinstance(reply, ReplyError) and str(reply).startswith(("MOVED", "ASK")):
                key, command = calls[index]
                [reply] = await self._at(key).pipeline([command])
            if isinstance(reply, ReplyError) and str(reply).startswith(_OUTAGE_REPLIES):
                raise reply
            return reply

        async def run(client: Pipelined, indexes: list[int]) -> None:
            async def attempt() -> None:
                got = await client.pipeline([calls[index][1] for index in indexes])
                for index, reply in zip(indexes, got, strict=True):
                    replies[index] = await alone(index, reply)

            await self._retrying(what, attempt)

        groups = self._by_server([key for key, _ in calls])
        await asyncio.gather(*(run(client, indexes) for client, indexes in groups))
        return replies

    async def _journaled(
        self, name: str, node: str, exactly_once: bool, *args: str | bytes | int | float
    ) -> Any:
        """Run a journaled script for `node`. With `exactly_once` (the call claims, queues or
        moves something) it carries a token: if its reply is lost, sending it again (marked so)
        returns the reply of the run that happened instead of doing it again."""
        if not exactly_once:
            return await self._run(name, "", "", 0, *args)
        token, low = self._tokens.issue(node)
        again = 0

        def attempt() -> Awaitable[Any]:
            nonlocal again
            command = self._call(name, token, low, again, *args)
            again = 1
            return self._redis.execute(*command)

        try:
            return await self._retrying(name, attempt)
        finally:
            self._tokens.settle(node, token)

    def _at(self, key: str) -> RedisClient | SentinelClient | SlotClient:
        """The client for the server that holds `key` (its slot's primary on a cluster)."""
        if isinstance(self._redis, ClusterClient):
            return self._redis.at(key)
        return self._redis

    async def _servers(self) -> list[Pipelined]:
        """A client per server of the grid: every primary of a cluster, else the one."""
        if isinstance(self._redis, ClusterClient):
            return list(await self._retrying("flush", self._redis.primaries))
        return [self._redis]

    async def _blocking(self, commands: list[Command], timeout: float) -> list[Any]:
        """Commands that block up to `timeout` seconds, on a connection of their own (a reply
        later than the client's command timeout after that counts as lost)."""
        return await self._redis.blocking(commands, timeout=timeout)

    async def _blocking_at(self, key: str, commands: list[Command], timeout: float) -> list[Any]:
        """`_blocking` at the server of `key`'s slot."""
        return await self._at(key).blocking(commands, timeout=timeout)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Raise `BackendError` for what Redis or the connection raises while doing `what`."""
        try:
            yield
        except ReplyError as exc:
            raise _reply_error(self.url, what, exc) from exc
        except ConnectionLost as exc:
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
        job: str | None = None,
    ) -> list[Submitted]:
        submitted, _ = await self.submit_and_claim(
            node,
            requests,
            into=into,
            on_top=on_top,
            waiter_key=waiter_key,
            dispatch=dispatch,
            job=job,
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
        job: str | None = None,
    ) -> tuple[list[Submitted], list[Claimed]]:
        """One script call per `MAX_SUBMIT_KEYS` requests or `MAX_SCRIPT_BYTES` of payloads
        (so none holds Redis for long, nor needs much memory at once); the first claims.
        Chunks go in order: a waiter's cycle check sees the edges of earlier chunks. With
        `spread_results`, the keys whose results moved to their own slots are answered from
        there, and only the others go to the scripts."""
        if not requests and not claim:
            return [], []
        options: dict[str, Any] = {
            "into": into,
            "on_top": on_top,
            "waiter_key": waiter_key,
            "dispatch": dispatch,
            "job": job,
        }
        if self._results is None or not requests:
            found, claimed = await self._submit_and_claim(node, requests, claim=claim, **options)
            return [_looked_for(answer) for answer in found], claimed
        return await self._submit_spread(node, requests, claim, options)

    async def _submit_spread(
        self, node: str, requests: Sequence[NewRequest], claim: int, options: dict[str, Any]
    ) -> tuple[list[Submitted], list[Claimed]]:
        """`submit_and_claim` with `spread_results`: look for the keys in their own slots,
        submit the others; those the script says to look for again (a record dropped since the
        look, see submit.lua) go round again."""
        answers: dict[int, Submitted] = {}
        claimed: list[Claimed] = []
        left = list(range(len(requests)))
        while left:
            looked_at, moved = await self._results_lookup([requests[i].key for i in left])
            rest = [i for i in left if requests[i].key not in moved]
            answers.update(
                (i, Submitted(requests[i].key, outcome=moved[requests[i].key]))
                for i in left
                if requests[i].key in moved
            )
            found, more = await self._submit_and_claim(
                node, [requests[i] for i in rest], claim=claim, looked_at=looked_at, **options
            )
            claim, claimed = 0, claimed + more
            answers.update(
                (i, answer) for i, answer in zip(rest, found, strict=True) if answer is not None
            )
            left = [i for i, answer in zip(rest, found, strict=True) if answer is None]
        return [answers[i] for i in range(len(requests))], claimed

    async def _results_lookup(self, keys: Sequence[str]) -> tuple[str, dict[str, bytes]]:
        """The grid server's time (ms) and the outcomes of the keys found in their own slots,
        read concurrently; read again after the time if the time came late (the grid's server
        was out of reach, say), so that the time is never later than the look."""
        assert self._results is not None
        client = self._at(self._keys.leases)
        (clock, clock_at), (moved, looked) = await asyncio.gather(
            _timed(self._retrying("lookup", lambda: client.execute("TIME"))),
            _timed(self._results.lookup(keys)),
        )
        if clock_at - looked > _LATE_CLOCK_S:
            moved = await self._results.lookup(keys)
        return str(int(clock[0]) * 1000 + int(clock[1]) // 1000), moved

    async def _submit_and_claim(
        self,
        node: str,
        requests: Sequence[NewRequest],
        *,
        into: str,
        on_top: bool,
        waiter_key: str | None,
        dispatch: bool,
        claim: int,
        job: str | None,
        looked_at: str = "",
    ) -> tuple[list[Submitted | None], list[Claimed]]:
        """The scripts of `submit_and_claim`; None for a request to look for again."""
        if not requests and not claim:
            return [], []
        found: list[Submitted | None] = []
        claimed: list[Claimed] = []
        for start, chunk in enumerate(_chunks(requests)):
            wanted = claim if start == 0 else 0
            args: list[str | bytes | int] = [
                node,
                into,
                int(on_top),
                waiter_key or "",
                int(dispatch),
                wanted,
                job or "",
                looked_at,
                int(self._own_inbox),
            ]
            for request in chunk:
                args += (request.key, request.payload, request.name if self._events else "")
            replies, flat = await self._journaled("submit", node, True, *args)
            found += (
                _submitted(request.key, reply)
                for request, reply in zip(chunk, replies, strict=True)
            )
            claimed += _claimed(flat)
        return found, claimed

    async def claim(self, node: str) -> Claimed | None:
        reply = await self._journaled("claim", node, True, node)
        return None if reply is None else Claimed(reply[0].decode(), reply[1])

    async def complete(
        self,
        node: str,
        key: str,
        outcome: bytes,
        *,
        cache: bool,
        ttl: float | None = None,
        function: str = "",
        error: str = "",
    ) -> None:
        failures = json.dumps({key: _event_text(error)}) if error and self._events else ""
        completion = Completion(key, outcome, cache, ttl, function)
        await self._complete(node, [completion], 0, "", failures)

    async def complete_and_claim(
        self,
        node: str,
        completions: Sequence[Completion],
        *,
        claim: int,
        volunteer_at: str | None = None,
    ) -> list[Claimed]:
        failed = (
            {c.key: _event_text(c.error) for c in completions if c.error} if self._events else None
        )
        failures = json.dumps(failed) if failed else ""
        return await self._complete(node, completions, claim, volunteer_at or "", failures)

    async def _complete(
        self,
        node: str,
        completions: Sequence[Completion],
        claim: int,
        volunteer_at: str,
        failures: str,
    ) -> list[Claimed]:
        """Run `complete`; with `spread_results`, the records it marks start their moves."""
        results = self._results
        moving = results.moving(completions) if results is not None else [False] * len(completions)
        mover = uuid.uuid4().hex[:16] if any(moving) else ""
        args: list[str | bytes | int] = [node, claim, volunteer_at, failures, mover]
        for completion, moves in zip(completions, moving, strict=True):
            args += _completion_args(completion, moves)
        # Journaled whatever it claims: it may report notifications to post (redis_inboxes).
        claimed, moved, posts = await self._journaled("complete", node, True, *args)
        if results is not None and moved:
            results.marked(node, mover, moved)
        if posts:
            tails = {_head(completion.key): completion.outcome for completion in completions}
            await self._inboxes.post(posts, tails)
        return _claimed(claimed)

    async def publish(self, node: str, key: str, outcome: bytes) -> bool:
        stored, posts = await self._run("publish", node, key, outcome)
        if posts:
            await self._inboxes.post(posts, {b"~" + _head(key): outcome})
        return bool(stored)

    async def take_notifications(self, node: str, timeout: float) -> list[Notification]:
        """One round trip: settle the previous wait's `taken` list, block until the inbox has
        an entry (moving it to `taken`), then take the rest of the inbox the same way. An
        attempt whose reply was lost is not trusted: the next one puts `taken` back first.
        With `spread_notifications`, the same on the node's own slot (`redis_inboxes`)."""
        if self._own_inbox:
            return _notifications(await self._inboxes.take(node, timeout))

        async def attempt(repaired: bool = False) -> list[Any]:
            received = node in self._received
            self._received.discard(node)
            commands = [self._call("acknowledge", node, int(received))]
            if timeout > 0:
                inbox, taken = self._keys.inbox(node), self._keys.taken(node)
                commands.append(("BLMOVE", inbox, taken, "LEFT", "RIGHT", timeout))
            commands.append(self._call("take", node))
            if timeout > 0:
                replies = await self._blocking(commands, timeout)
            else:
                replies = await self._redis.pipeline(commands)
            for reply in replies:
                if isinstance(reply, ReplyError):
                    if timeout > 0 and reply is replies[1] and not repaired:
                        await self._repair(self._keys.inbox(node), reply)  # garbage: deleted
                        return await attempt(repaired=True)
                    raise reply
            return replies

        replies = await self._retrying("wait", attempt)
        self._received.add(node)
        moved = [replies[1]] if timeout > 0 and replies[1] is not None else []
        return _notifications(moved + replies[-1])

    async def wait_for_work(self, node: str, timeout: float) -> None:
        bell = self._keys.wake(node)

        async def attempt() -> None:
            if timeout <= 0:
                [reply] = await self._redis.pipeline([("LPOP", bell)])
            else:
                [reply] = await self._blocking([("BLPOP", bell, timeout)], timeout)
            if isinstance(reply, ReplyError):
                await self._repair(bell, reply)

        await self._retrying("wait", attempt)

    async def _repair(self, key: str, error: ReplyError) -> None:
        """Delete `key` if it holds garbage of the wrong type (a wake-up is all it costs);
        raise any other error reply."""
        if not str(error).startswith("WRONGTYPE"):
            raise error
        _log.warning("deleted a key that held the wrong type", key=key)
        await self._redis.pipeline([("DEL", key), ("LPUSH", self._keys.corrupt, key)])

    async def wait_and_claim(self, node: str, timeout: float) -> Claimed | None:
        """BLPOP the wake token and claim in one pipeline: Redis runs the claim the moment the
        token arrives, sparing the worker a round trip. If that reply is lost, the claim is
        sent again with its token (it returns what the first one claimed, if it ran)."""
        token, low = self._tokens.issue(node)
        bell = self._keys.wake(node)
        try:
            try:
                claim = self._call("claim", token, low, 0, node)
                woken, reply = await self._blocking([("BLPOP", bell, timeout), claim], timeout)
                if isinstance(woken, ReplyError):
                    await self._repair(bell, woken)
                if isinstance(reply, ReplyError):
                    raise reply
            except (ConnectionLost, ReplyError):
                again = self._call("claim", token, low, 1, node)
                reply = await self._retrying("claim", lambda: self._redis.execute(*again))
        finally:
            self._tokens.settle(node, token)
        return None if reply is None else Claimed(reply[0].decode(), reply[1])

    async def state(self, key: str) -> RequestState:
        status = await self._execute("state", "HGET", self._keys.record(key), F_STATUS)
        if status is None and self._results is not None and await self._results.lookup([key]):
            return RequestState.DONE
        return RequestState.UNKNOWN if status is None else _STATES.get(status, RequestState.PENDING)

    async def result(self, key: str) -> bytes | None:
        status, *outcome = await self._execute(
            "result", "HMGET", self._keys.record(key), F_STATUS, *chunk_fields(F_OUTCOME)
        )
        if status == DONE.encode():
            return unchunked(outcome)
        if status is None and self._results is not None:
            return (await self._results.lookup([key])).get(key)
        return None

    async def payloads(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        fields = chunk_fields(F_PAYLOAD)
        commands = [("HMGET", self._keys.record(key), *fields) for key in keys]
        replies = await self._retrying("payloads", lambda: self._redis.pipeline(commands))
        # A record of the wrong type has no payload to show.
        return [None if isinstance(reply, ReplyError) else unchunked(reply) for reply in replies]

    async def cancel(
        self,
        node: str,
        job: str,
        *,
        roots: Sequence[str] = (),
        below: str | None = None,
    ) -> Cancelling:
        cancelled, remaining, posts = await self._journaled(
            "cancel", node, True, node, job, below or "", *roots
        )
        if posts:
            await self._inboxes.post(posts, {})
        return Cancelling(tuple(map(_text, cancelled)), remaining)

    async def ask_to_cancel(self, owner: str, job: str) -> bool:
        asked, posts = await self._run("ask_to_cancel", owner, job)
        if posts:
            await self._inboxes.post(posts, {})
        return bool(asked)

    # -- distribution -----------------------------------------------------------------------------

    async def volunteer(self, distributor: str, node: str) -> None:
        await self._run("volunteer", distributor, node)

    async def hand_out(self, distributor: str, *, even_share: bool = False) -> list[Assignment]:
        flat = await self._journaled("hand_out", distributor, True, distributor, int(even_share))
        return [Assignment(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def trim(self, distributor: str, members: Sequence[str]) -> int:
        moved: int = await self._journaled("trim", distributor, True, distributor, *members)
        return moved

    async def steal(self, distributor: str, member: str, count: int) -> int:
        moved: int = await self._journaled("steal", distributor, True, distributor, member, count)
        return moved

    async def lengths(self, nodes: Sequence[str]) -> list[int]:
        if not nodes:
            return []
        commands = [("LLEN", self._keys.work(n)) for n in nodes]
        replies = await self._retrying("lengths", lambda: self._redis.pipeline(commands))
        return [0 if isinstance(reply, ReplyError) else reply for reply in replies]

    async def volunteers(self, distributor: str) -> list[str]:
        try:
            queue = await self._execute(
                "volunteers", "LRANGE", self._keys.volunteers(distributor), 0, -1
            )
        except BackendError:  # garbage of the wrong type: no volunteers to show
            return []
        return [node.decode(errors="replace") for node in queue]

    # -- membership and recovery ------------------------------------------------------------------

    async def join(self, node: str, kind: NodeKind, distributor: str | None, ttl: float) -> None:
        own_inbox = int(self._own_inbox)
        command = self._call("join", node, kind.value, distributor or "", _ms(ttl), own_inbox)
        _, server, _ = await self._retrying("join", lambda: self._run_with_server(command))
        if server:
            self._server_seen[node] = server

    async def heartbeat(
        self, node: str, ttl: float, counters: Mapping[str, int] | None = None
    ) -> Beat:
        published = "" if counters is None else json.dumps(dict(counters), separators=(",", ":"))
        low = self._tokens.oldest(node)
        cut_short = self._cut_short
        command = self._call("heartbeat", node, _ms(ttl), published, low)
        extra: list[Command] = (
            [] if self._results is not None else [("EXISTS", self._keys.results_dropped)]
        )
        reply, server, seen = await self._retrying(
            "heartbeat", lambda: self._run_with_server(command, *extra)
        )
        if seen:
            self._saw_results_moved(seen[0])
        registered, clock, own, watched = reply
        if watched:
            self._watched_until = time.monotonic() + self._watch_seconds
        lost = self._cut_short_seen.get(node, 0) < cut_short
        self._cut_short_seen[node] = cut_short
        if server:
            lost = lost or self._server_seen.get(node, server) != server
            self._server_seen[node] = server
        return Beat(bool(registered), clock, own if own >= 0 else None, lost_writes=lost)

    async def _run_with_server(
        self, script: Command, *extra: Command
    ) -> tuple[Any, bytes, list[Any]]:
        """A script's reply, and the run id of the server that ran it (b"" when INFO is
        denied). A node whose heartbeat lands on another server than its join or previous
        heartbeat (a replica promoted in a failover, a server restarted from its append-only
        file) may have lost the writes it made since: the last heartbeat replicated or saved
        may be its own last one, or it may have made none yet, so the clock cannot tell (see
        `Beat.lost_writes`)."""
        reply, info, *more = await self._redis.pipeline([script, ("INFO", "server"), *extra])
        if isinstance(reply, ReplyError):
            raise reply
        found = None if isinstance(info, ReplyError) else _RUN_ID.search(info)
        return reply, found.group(1) if found else b"", more

    async def reconcile(self, node: str, keep: Sequence[str]) -> int:
        count: int = await self._journaled("reconcile", node, True, node, *keep)
        await self._blobs.reindex()  # bytes whose index entry the lost writes took
        return count

    async def leave(self, node: str) -> int:
        if self._results is not None:
            await self._results.release(node)  # the moves of node's keys use node's journal
        count: int = await self._run("leave", node)
        if self._own_inbox:
            await self._inboxes.drop([node])
        return count

    async def reap(self, reaper: str, max_crashes: int) -> Reaped:
        dead, requeued, crashed_out, own_inboxes = await self._journaled(
            "reap", reaper, True, reaper, max_crashes
        )
        await self._inboxes.drop(list(map(_text, own_inboxes)))
        return Reaped(tuple(map(_text, dead)), requeued, tuple(map(_text, crashed_out)))

    async def nodes(self) -> list[NodeInfo]:
        rows = await self._run("nodes")
        found = []
        for node, kind, distributor, alive, work, running, counters in rows:
            if kind is None or kind.decode() not in NodeKind.__members__.values():
                _log.warning("node without a membership record skipped", node=node.decode())
                continue
            found.append(
                NodeInfo(
                    node.decode(),
                    NodeKind(kind.decode()),
                    None if distributor is None else distributor.decode(),
                    bool(alive),
                    work,
                    running,
                    _counters(counters),
                )
            )
        return sorted(found, key=lambda info: info.node)

    async def members(self, distributor: str) -> list[str]:
        return [node.decode() for node in await self._run("members", distributor)]

    async def work_lists(self) -> dict[str, int]:
        found: dict[str, int] = {}
        prefix = len(self._keys.work("").encode())
        cursor = b"0"
        while True:
            cursor, keys = await self._execute(
                "work_lists", "SCAN", cursor, "MATCH", self._keys.work_pattern(), "COUNT", 1000
            )
            for key in keys:
                with contextlib.suppress(BackendError):  # garbage of another type: no list
                    length = await self._execute("work_lists", "LLEN", key)
                    if length:
                        found[key[prefix:].decode(errors="replace")] = length
            if cursor == b"0":
                return dict(sorted(found.items()))

    async def servers(self) -> list[ServerLoad]:
        """Every server at once: a dashboard's sample waits for the slowest, not for all."""
        return list(await asyncio.gather(*map(self._server_load, await self._servers())))

    async def _server_load(self, server: Pipelined) -> ServerLoad:
        if isinstance(server, SlotClient) and isinstance(self._redis, ClusterClient):
            slots, grid_slot = self._redis.share(server.slot)
        else:
            slots, grid_slot = redis_servers.SLOTS, True
        replies = await self._retrying("servers", partial(_answered, server, redis_servers.QUERY))
        try:
            return redis_servers.server_load(replies, slots=slots, grid_slot=grid_slot)
        except ValueError as exc:
            raise BackendError(f"Redis at {self.url}: {exc}") from exc

    async def cache_size(self) -> int:
        return (await self.cache_stats()).entries

    async def _scan_records(self, what: str) -> AsyncIterator[list[str]]:
        """The request keys of every record, in SCAN batches (a key may come twice)."""
        cursor = b"0"
        start = len(self._keys.record("").encode())
        while True:
            cursor, found = await self._execute(
                what, "SCAN", cursor, "MATCH", self._keys.pattern(RECORD), "COUNT", _SCAN_COUNT
            )
            if found:
                yield [name[start:].decode(errors="replace") for name in found]
            if cursor == b"0":
                return

    async def cache_stats(self) -> CacheStats:
        seen: set[str] = set()
        usage: dict[str, CacheUsage] = {}
        if self._results is not None:
            await self._results.copied()
            await self._results.usage(seen, usage)
        async for keys in self._scan_records("cache_stats"):
            flat = await self._run("cache_entries", *keys)
            for i in range(0, len(flat), 3):
                key, name, size = flat[i].decode(), flat[i + 1].decode(), flat[i + 2]
                if key not in seen:
                    seen.add(key)
                    found = usage.get(name, CacheUsage())
                    usage[name] = CacheUsage(found.entries + 1, found.bytes + size)
        entries = sum(u.entries for u in usage.values())
        return CacheStats(entries, sum(u.bytes for u in usage.values()), usage)

    async def cache_clear(self, function: str | None = None) -> int:
        every = int(function is None)
        clearer = f"cache-clear-{uuid.uuid4().hex}"  # names its journal (see cache_drop.lua)
        dropped: set[str] = set()
        if self._results is not None:
            await self._results.copied()
        try:
            async for keys in self._scan_records("cache_clear"):
                dropped.update(
                    map(
                        _text,
                        await self._journaled(
                            "cache_drop", clearer, True, clearer, function or "", every, *keys
                        ),
                    )
                )
        finally:
            await self._execute("cache_clear", "DEL", self._keys.journal(clearer))
        if self._results is not None:
            dropped |= await self._results.clear(function)
        return len(dropped)

    async def forget(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        forgetter = f"forget-{uuid.uuid4().hex}"  # names its journal (see cache_drop.lua)
        if self._results is not None:
            await self._results.copied()
        try:
            dropped = set(
                map(
                    _text,
                    await self._journaled("cache_drop", forgetter, True, forgetter, "", 1, *keys),
                )
            )
        finally:
            await self._execute("forget", "DEL", self._keys.journal(forgetter))
        if self._results is not None:
            dropped |= await self._results.forget(keys)
        return len(dropped)

    async def events(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Event ids are `<entry number>/<index in the entry>`: one entry of the event list
        holds the events of one script call (see `emit_events` in common.lua)."""
        self._watched_until = time.monotonic() + self._watch_seconds
        entry, _, index = (after or "").partition("/")
        start = int(entry) if entry.isdigit() else -1
        skip = int(index) if start >= 0 and index.isdigit() else -1
        found: list[Event] = []
        cursor = start
        while True:  # at least one read, which keeps the events published (even of none)
            # Pages of a few entries: one entry may hold hundreds of events.
            count = min(max(0, limit - len(found)), _EVENT_PAGE)
            first, *entries = await self._run("events_read", cursor, count)
            for number, entry_text in enumerate(entries, start=first):
                found += _events(number, entry_text, skip + 1 if number == start else 0)
            if len(entries) < count or len(found) >= limit:
                break
            cursor = first + len(entries)
        return found[: max(0, limit)]

    async def flush(self) -> None:
        cursor = b"0"
        while True:
            cursor, found = await self._execute(
                "flush", "SCAN", cursor, "MATCH", self._keys.pattern(), "COUNT", 1000
            )
            if found:
                await self._execute("flush", "UNLINK", *found)
            if cursor == b"0":
                break
        await self._blobs.flush()
        await self._inboxes.flush()
        if self._results is not None:
            await self._results.flush()

    # -- large values -----------------------------------------------------------------------------

    async def put_blob(
        self, digest: str, data: bytes, *, holder: str, until_done: bool = False
    ) -> None:
        if self._results is not None and not until_done:
            self._results.hold(holder)  # the record refers to the blob: it must stay
        await self._blobs.put(digest, data, holder, until_done)

    async def get_blob(self, digest: str) -> bytes | None:
        return await self._blobs.get(digest)

    async def sweep_blobs(self, grace: float) -> int:
        return await self._blobs.sweep(_ms(grace) if grace > 0 else 0)

    async def blobs(self) -> dict[str, int]:
        return await self._blobs.sizes()


def _chunks(requests: Sequence[NewRequest]) -> Iterator[Sequence[NewRequest]]:
    """`requests` in consecutive runs of at most `MAX_SUBMIT_KEYS` requests and, unless one
    request alone is larger, `MAX_SCRIPT_BYTES` of payloads (at least one run, maybe empty)."""
    start, size = 0, 0
    for index, request in enumerate(requests):
        if index > start and (
            index - start == MAX_SUBMIT_KEYS or size + len(request.payload) > MAX_SCRIPT_BYTES
        ):
            yield requests[start:index]
            start, size = index, 0
        size += len(request.payload)
    yield requests[start:]


_EVENT_PAGE = 100
"""Entries of the event list read per `events_read` call by `events`."""

_EVENT_SEPARATOR, _FIELD_SEPARATOR, _EVENT_FIELDS = "\x1e", "\x1f", 7
_EVENT_KINDS = frozenset(kind.value for kind in EventKind)


def _events(number: int, entry: bytes, first: int) -> list[Event]:
    """The events of entry `number` of the event list, from its `first` on (see `redis_keys`:
    the time, then the events, joined by \x1e; fields by \x1f); a mangled event is left out."""
    head, *rows = entry.decode("utf-8", "replace").split(_EVENT_SEPARATOR)
    seconds, _, micros = head.partition(_FIELD_SEPARATOR)
    if not (seconds.isdigit() and micros.isdigit()):
        return []
    when = int(seconds) + int(micros) / 1e6
    found = []
    for index, row in enumerate(rows):
        parts = row.split(_FIELD_SEPARATOR)
        if index < first or len(parts) != _EVENT_FIELDS or parts[0] not in _EVENT_KINDS:
            continue
        kind, node, key, name, parent, job, detail = parts
        event_id = f"{number}/{index}"
        found.append(Event(event_id, when, EventKind(kind), node, key, name, parent, job, detail))
    return found


def _event_text(text: str) -> str:
    """`text` fit for an event field: without the separators of the stream's encoding."""
    return text.replace(_EVENT_SEPARATOR, " ").replace(_FIELD_SEPARATOR, " ")


def _counters(raw: bytes) -> dict[str, int]:
    """A node's published counters; nothing for a missing or garbled record."""
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if type(v) is int}


def _submitted(key: str, reply: list[Any]) -> Submitted | None:
    """What the submit script answered for `key`; None: look for it again."""
    if reply[0] == SUBMITTED_LOOK_AGAIN:
        return None
    if reply[0] == SUBMITTED_DONE:
        return Submitted(key, outcome=reply[1])
    if reply[0] == SUBMITTED_CYCLE:
        return Submitted(key, cycle=tuple(map(_text, reply[1:])))
    return Submitted(key, partial=reply[2] if len(reply) > 2 else None, shared=bool(reply[1]))


async def _timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """What `awaitable` gives, and when (monotonic seconds)."""
    return await awaitable, time.monotonic()


_LATE_CLOCK_S = 0.05
"""A server time that came this much later than the look it goes with is read before another
look (see `RedisBackend._results_lookup`)."""


def _looked_for(answer: Submitted | None) -> Submitted:
    """An answer of a submission made without a look in the keys' own slots: never "look
    again" (the script says that only to a caller that looked)."""
    if answer is None:
        raise BackendError("the submit script said to look again, but nothing was looked at")
    return answer


def _claimed(flat: list[bytes]) -> list[Claimed]:
    """Claimed requests from a script's {key1, payload1, key2, payload2, ...}."""
    return [Claimed(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2)]


async def _answered(server: Pipelined, commands: Sequence[Command]) -> list[Any]:
    """The replies of `commands` sent to `server` in one round trip; the first error reply
    raised (`_retrying` waits out the ones of a server that is not ready)."""
    replies = await server.pipeline(commands)
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise reply
    return replies


def _is_noscript(error: ReplyError) -> bool:
    return str(error).startswith("NOSCRIPT")


def _reply_error(url: str, what: str, error: ReplyError) -> BackendError:
    """The `BackendError` for an error reply; one that says so when Redis is out of memory."""
    text = str(error)
    if text.startswith("OOM"):
        return BackendFull(
            f"Redis at {url} refuses writes: it is out of memory (maxmemory reached while "
            f"doing {what}); free memory or raise maxmemory. Redis said: {text}"
        )
    return BackendError(f"Redis {what} failed at {url}: {text}")


def _completion_args(completion: Completion, moves: bool) -> tuple[str | bytes | int, ...]:
    """One completion's arguments of the `complete` script (see `COMPLETION_ARGS`); `moves`:
    its cached result moves to its key's own slot."""
    ttl_ms = 0 if completion.ttl is None else _ms(completion.ttl)
    return (
        completion.key,
        completion.outcome,
        "m" if moves else str(int(completion.cache)),
        ttl_ms,
        completion.function,
    )


def _head(key: str) -> bytes:
    """The head of key's notification (`<len(key)>:<key>`): the outcome follows it."""
    return f"{len(key)}:{key}".encode()


def _ms(seconds: float) -> int:
    """A lease in whole milliseconds (at least 1)."""
    return max(1, round(seconds * 1000))


def open_redis(url: str, *, settings: Settings | None = None) -> RedisBackend:
    """The Redis backend of `url` in the layout that `settings` (or the environment) names
    (`Settings.layout`)."""
    settings = settings or Settings()
    if settings.layout == "sharded":
        from girder.backends.sharded import ShardedRedisBackend  # noqa: PLC0415 (it imports this)

        return ShardedRedisBackend(url, settings=settings)
    return RedisBackend(url, settings=settings)
