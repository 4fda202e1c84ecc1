"""`SentinelClient`: girder's RESP client (`girder.backends.resp`) for a grid on a single Redis
primary with replicas, watched by Redis Sentinel.

The client asks the sentinels of the URL, in turn, `SENTINEL get-master-addr-by-name <service>`,
checks with `ROLE` that the node named is a primary (a sentinel may not have noticed a failover
yet), and sends everything there through a `RedisClient`, keeping its pipelining, its timeouts
and its failure rules (`NotSent` / `ReplyLost`). A lost connection, or a `READONLY` reply (the
node was demoted to a replica), forgets the primary: the error goes up, the backend waits and
tries again (`_retrying`), and the next attempt asks the sentinels again, by which time they may
have promoted a replica.

URLs: `redis+sentinel://[[user]:password@]host:port[,host:port...]/service-name[?db=N]`; the
nodes are sentinels (any one that answers will do), the credentials and the database are the
primary's; `sentinel_password=` (and `sentinel_username=`) in the query authenticate to the
sentinels when they need it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, unquote

from girder.backends.resp import (
    Command,
    ConnectionLost,
    NotSent,
    RedisClient,
    ReplyError,
    ServerAddress,
)

SCHEME = "redis+sentinel"

Node = tuple[str, int]

_SENTINEL_TIMEOUT = 2.0
"""Seconds a sentinel may take to connect or answer before the next one is asked."""


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names: the sentinels, the service, and how to talk to the
    primary (its credentials and database; its host and port come from the sentinels)."""

    sentinels: tuple[ServerAddress, ...]
    service: str
    primary: ServerAddress


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels and service a `redis+sentinel://` URL names; `ValueError` saying what is
    wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != SCHEME:
        raise ValueError(f"the scheme must be {SCHEME}, not {scheme!r}")
    rest, _, query_text = rest.partition("?")
    query = {name: values[-1] for name, values in parse_qs(query_text).items()}
    userinfo, at, location = rest.rpartition("@")
    hosts, slash, service = location.partition("/")
    service = unquote(service.strip("/"))
    if not slash or not service or "/" in service:
        raise ValueError("name the service after the sentinels: .../service-name")
    username, password = query.get("username"), query.get("password")
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or username
        if colon:
            password = unquote(secret)
    db_text = query.get("db", "0")
    if not db_text.isdigit():
        raise ValueError(f"the database must be a number, not {db_text!r}")
    sentinels = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"each sentinel must be host:port, not {node!r}")
        sentinels.append(
            ServerAddress(
                host=host.strip("[]"),
                port=int(port),
                username=query.get("sentinel_username"),
                password=query.get("sentinel_password"),
            )
        )
    primary = ServerAddress(db=int(db_text), username=username, password=password)
    return SentinelTarget(tuple(sentinels), service, primary)


class SentinelClient:
    """The `RedisClient` interface, sending everything to the primary the sentinels name."""

    def __init__(self, target: SentinelTarget, **options: Any) -> None:
        """`options` go to the primary's `RedisClient`."""
        self.service = target.service
        self._template = target.primary
        self._options = options
        self._sentinels = [
            RedisClient(
                address, retries=0, timeout=_SENTINEL_TIMEOUT, connect_timeout=_SENTINEL_TIMEOUT
            )
            for address in target.sentinels
        ]
        self._clients: dict[Node, RedisClient] = {}
        self._owner: Node | None = None
        self._refreshing: asyncio.Future[Node] | None = None
        self._closed = False

    async def execute(self, *command: str | bytes | int | float) -> Any:
        """One command's reply; an error reply raises `ReplyError`."""
        [reply] = await self.pipeline([command])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one round trip, to the primary."""
        return await self._routed(commands, lambda client, batch: client.pipeline(batch))

    async def blocking(
        self, commands: Sequence[Command], *, timeout: float | None = None
    ) -> list[Any]:
        """Commands that may block, on a connection of their own (see `RedisClient.blocking`)."""
        return await self._routed(
            commands, lambda client, batch: client.blocking(batch, timeout=timeout)
        )

    async def _routed(
        self,
        commands: Sequence[Command],
        send: Callable[[RedisClient, Sequence[Command]], Awaitable[list[Any]]],
    ) -> list[Any]:
        node = await self._primary()
        try:
            replies = await send(self._client(node), commands)
        except ConnectionLost:
            self._stale(node)
            raise
        if any(_demoted(reply) for reply in replies):
            self._stale(node)  # the backend waits READONLY out; the sentinels are asked again
        return replies

    async def _primary(self) -> Node:
        """The primary, as the sentinels last named it (asking them again when stale)."""
        if self._owner is not None:
            return self._owner
        if self._refreshing is None:  # one task asks; the others wait for its answer
            self._refreshing = asyncio.ensure_future(self._refresh())
        refreshing = self._refreshing
        try:
            self._owner = await asyncio.shield(refreshing)
        finally:
            if self._refreshing is refreshing and refreshing.done():
                self._refreshing = None
        return self._owner

    async def _refresh(self) -> Node:
        """Ask the sentinels in turn for the service's primary, until one names a node that
        says it is a primary."""
        failures = []
        for sentinel in self._sentinels:
            where = f"sentinel {sentinel.address.host}:{sentinel.address.port}"
            try:
                reply = await sentinel.execute("SENTINEL", "get-master-addr-by-name", self.service)
            except (ConnectionLost, ReplyError) as exc:
                failures.append(f"{where}: {exc}")
                continue
            if not reply:
                failures.append(f"{where}: does not know the service {self.service!r}")
                continue
            node = (reply[0].decode(), int(reply[1]))
            problem = await self._not_primary(node)
            if problem is None:
                return node
            failures.append(f"{where} names {node[0]}:{node[1]}, which {problem}")
        raise NotSent(f"no sentinel named a primary for {self.service!r}: {failures}")

    async def _not_primary(self, node: Node) -> str | None:
        """None when `node` says it is a primary; else what is wrong with it."""
        try:
            role = await self._client(node).execute("ROLE")
        except (ConnectionLost, ReplyError) as exc:
            return f"cannot be asked its role ({exc})"
        if role and role[0] == b"master":
            return None
        return f"is a {role[0].decode() if role else 'node of no role'}"

    def _stale(self, node: Node) -> None:
        if self._owner == node:
            self._owner = None

    def _client(self, node: Node) -> RedisClient:
        client = self._clients.get(node)
        if client is None:
            if self._closed:
                raise NotSent("the client is closed")
            address = replace(self._template, host=node[0], port=node[1])
            client = self._clients[node] = RedisClient(address, **self._options)
        return client

    def close(self) -> None:
        self._closed = True
        for client in [*self._sentinels, *self._clients.values()]:
            client.close()
        self._clients.clear()


def _demoted(reply: Any) -> bool:
    """A reply saying the node is no primary (any more): writes go elsewhere now."""
    return isinstance(reply, ReplyError) and "READONLY" in str(reply)
