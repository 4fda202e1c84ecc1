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
sentinels when they need it. `rediss+sentinel://` talks TLS to the sentinels and to the primary,
with the query options of `rediss://` (`ssl_ca_certs=`, `ssl_cert_reqs=`); the sentinels must
then name the primary's TLS port (they monitor it over TLS: `tls-replication yes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from girder.backends.primary import (
    Node,
    PrimaryClient,
    Send,
    host_ports,
    split_hosts_url,
    tls_schemes,
)
from girder.backends.resp import (
    Command,
    ConnectionLost,
    NotSent,
    RedisClient,
    ReplyError,
    ServerAddress,
)

SCHEMES = tls_schemes("redis+sentinel")


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
    """The sentinels and service a `redis+sentinel://` (or `rediss+sentinel://`) URL names;
    `ValueError` saying what is wrong."""
    parts = split_hosts_url(url, SCHEMES[0])
    hosts, slash, service = parts.location.partition("/")
    service = unquote(service.strip("/"))
    if not slash or not service or "/" in service:
        raise ValueError("name the service after the sentinels: .../service-name")
    db_text = parts.query.get("db", "0")
    if not db_text.isdigit():
        raise ValueError(f"the database must be a number, not {db_text!r}")
    sentinels = tuple(
        ServerAddress(
            host=host,
            port=port,
            username=parts.query.get("sentinel_username"),
            password=parts.query.get("sentinel_password"),
            tls=parts.tls,
        )
        for host, port in host_ports(hosts, "sentinel")
    )
    primary = ServerAddress(
        db=int(db_text), username=parts.username, password=parts.password, tls=parts.tls
    )
    return SentinelTarget(sentinels, service, primary)


class SentinelClient(PrimaryClient):
    """The `RedisClient` interface, sending everything to the primary the sentinels name."""

    def __init__(self, target: SentinelTarget, **options: Any) -> None:
        """`options` go to the primary's `RedisClient`."""
        super().__init__(target.primary, **options)
        self.service = target.service
        self._sentinels = [
            RedisClient(
                address, retries=0, timeout=_SENTINEL_TIMEOUT, connect_timeout=_SENTINEL_TIMEOUT
            )
            for address in target.sentinels
        ]

    async def _routed(self, commands: Sequence[Command], send: Send) -> list[Any]:
        node = await self._primary()
        try:
            replies = await send(self._client(node), commands)
        except ConnectionLost:
            self._stale(node)
            raise
        if any(_demoted(reply) for reply in replies):
            self._stale(node)  # the backend waits READONLY out; the sentinels are asked again
        return replies

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
            self.answered = True
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

    def _other_clients(self) -> list[RedisClient]:
        return self._sentinels


def _demoted(reply: Any) -> bool:
    """A reply saying the node is no primary (any more): writes go elsewhere now."""
    return isinstance(reply, ReplyError) and "READONLY" in str(reply)
