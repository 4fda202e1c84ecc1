"""`PrimaryClient`: the part that `ClusterClient` and `SentinelClient` share. Both send every
command to one primary that they must first find (in a cluster's slot map, or from the
sentinels), through a `RedisClient` per node, and forget it when it stops answering for the
grid; they differ only in how they find it (`_refresh`) and in what a reply tells them
(`_routed`).
"""

from __future__ import annotations

import asyncio
import ssl
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, unquote

from girder.backends.resp import (
    Command,
    NotSent,
    Pipelined,
    RedisClient,
    ServerAddress,
    tls_context,
)

Node = tuple[str, int]

Send = Callable[[RedisClient, Sequence[Command]], Awaitable[list[Any]]]
"""How a batch goes to a node's client: `pipeline`, or `blocking` with its timeout."""


@dataclass(frozen=True, slots=True)
class HostsUrl:
    """What a `redis+cluster://` or `redis+sentinel://` URL (or its `rediss+` form) says before
    its own parts."""

    location: str
    """What follows the credentials: `host:port[,host:port...]`, then the URL's path."""
    query: dict[str, str]
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None
    """The TLS context of every node, for a `rediss+` scheme (from `ssl_ca_certs=` and
    `ssl_cert_reqs=` in the query, as for `rediss://`)."""


def tls_schemes(scheme: str) -> tuple[str, str]:
    """`scheme` (`redis+...`) and its TLS form (`rediss+...`)."""
    return scheme, scheme.replace("redis+", "rediss+", 1)


def split_hosts_url(url: str, scheme: str) -> HostsUrl:
    """Check the scheme (`scheme` or its `rediss+` form); take the query, the credentials (in
    the URL, else `username` and `password` in the query) and the TLS context. `ValueError`
    saying what is wrong."""
    found, sep, rest = url.partition("://")
    schemes = tls_schemes(scheme)
    if not sep or found not in schemes:
        raise ValueError(f"the scheme must be {' or '.join(schemes)}, not {found!r}")
    rest, _, query_text = rest.partition("?")
    query = {name: values[-1] for name, values in parse_qs(query_text).items()}
    userinfo, at, location = rest.rpartition("@")
    username, password = query.get("username"), query.get("password")
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or username
        if colon:
            password = unquote(secret)
    tls = tls_context(query) if found == schemes[1] else None
    return HostsUrl(location, query, username, password, tls)


def host_ports(hosts: str, what: str) -> list[tuple[str, int]]:
    """`host:port[,host:port...]` as (host, port) pairs; `ValueError` naming `what` (a node,
    a sentinel) when one is not host:port."""
    pairs = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"each {what} must be host:port, not {node!r}")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


class PrimaryClient(Pipelined):
    """The `RedisClient` interface, sending everything to the primary that `_refresh` finds."""

    def __init__(self, template: ServerAddress, **options: Any) -> None:
        """`template`: credentials and database of every node (host and port are the node's);
        `options` go to each node's `RedisClient`."""
        self._template = template
        self._options = options
        self._clients: dict[Node, RedisClient] = {}
        self._owner: Node | None = None
        self._refreshing: asyncio.Future[Node] | None = None
        self._closed = False
        self.answered = False
        """Whether a node of the deployment (a cluster node, a sentinel) has answered: the
        URL is right, so a primary that cannot be reached is down, and will be replaced."""

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

    @abstractmethod
    async def _routed(self, commands: Sequence[Command], send: Send) -> list[Any]:
        """Send `commands` to the primary with `send`; their replies, in order."""

    @abstractmethod
    async def _refresh(self) -> Node:
        """Find the primary now (raising `NotSent` saying why when nobody can name it)."""

    async def _primary(self) -> Node:
        """The primary as last found (finding it again when forgotten)."""
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

    def _stale(self, node: Node) -> None:
        """Forget the primary if it is `node`: the next command finds it again."""
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

    def _other_clients(self) -> Iterable[RedisClient]:
        """Clients to close besides the nodes' (a sentinel client's sentinels)."""
        return ()

    def close(self) -> None:
        self._closed = True
        for client in [*self._other_clients(), *self._clients.values()]:
            client.close()
        self._clients.clear()
