"""`ClusterClient`: girder's RESP client (`girder.backends.resp`) for a grid on a Redis Cluster.

Every key of a grid's own state carries the same `{prefix}` hash tag, so that state lives in one
slot, served by one primary at a time: the client finds that primary in the slot map (CLUSTER
SLOTS, asked of the seed nodes of the URL and of every node seen since) and sends everything
there through a `RedisClient`, keeping its pipelining, its timeouts and its failure rules (a
command that certainly did not reach the server is `NotSent`, one whose reply was lost is
`ReplyLost`). Keys that live in other slots (the bytes of blobs, tagged by their digest) go
through `at(key)`: the same rules, sent to the primary of that key's slot, found in the same map.

Redirections: a `MOVED` reply (the slot has a new owner: a failover, or a resharding that
finished) refreshes the map and sends the redirected commands, and only those, to the new
owner; an `ASK` reply (the slot is being migrated and the key is already on the target) sends
`ASKING` and the command to the node named, once, without changing the map, except for the
grid's own slot: its commands wait until the migration ends (see `_GRID_SLOT_MIGRATING`). A
redirected command did not run, so sending it elsewhere is safe. A lost connection marks the
map stale (the primary may have died) and the error goes up: the backend waits it out and tries
again (`CLUSTERDOWN` and `TRYAGAIN` replies too), by which time a replica may have been
promoted.

URLs: `redis+cluster://[[user]:password@]host:port[,host:port...][?password=...&username=...]`;
the nodes are seeds (any one that answers will do), the database is always 0. `rediss+cluster://`
talks TLS to every node, with the query options of `rediss://` (`ssl_ca_certs=`,
`ssl_cert_reqs=`); the nodes must then run with `tls-cluster yes`, so that CLUSTER SLOTS names
their TLS ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    Pipelined,
    ReplyError,
    ServerAddress,
)

SCHEMES = tls_schemes("redis+cluster")
SLOTS = 16384
_MAX_REDIRECTS = 5
_GRID_SLOT_MIGRATING = "TRYAGAIN the grid's slot is being migrated to another node"
"""The reply that stands for an `ASK` of the grid's own slot. A script of the grid derives
most of the keys it touches, so on the target of a migration it would read the keys not moved
yet as absent, and write keys that the migration then cannot move (BUSYKEY): the grid waits
for the migration to end (MOVED) instead, as for a `TRYAGAIN`."""
"""MOVED/ASK hops one call may take before it gives up (a map that keeps changing)."""


def parse_cluster_url(url: str) -> list[ServerAddress]:
    """The seed nodes a `redis+cluster://` (or `rediss+cluster://`) URL names; `ValueError`
    saying what is wrong."""
    parts = split_hosts_url(url, SCHEMES[0])
    hosts = parts.location.rstrip("/")
    if "/" in hosts:
        raise ValueError("a cluster has no databases: drop the /db part")
    return [
        ServerAddress(
            host=host, port=port, username=parts.username, password=parts.password, tls=parts.tls
        )
        for host, port in host_ports(hosts, "node")
    ]


def key_slot(key: str | bytes) -> int:
    """The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part inside the first
    `{...}`, if not empty) or of the whole key, modulo 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % SLOTS


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


class ClusterClient(PrimaryClient):
    """The `RedisClient` interface, sending everything to the primary of one slot (and, through
    `at`, to the primary of any other)."""

    def __init__(self, seeds: Sequence[ServerAddress], anchor: str, **options: Any) -> None:
        """`anchor`: a key of the slot to serve; `options` go to each node's `RedisClient`."""
        if not seeds:
            raise ValueError("a cluster URL needs at least one node")
        super().__init__(seeds[0], **options)
        self._known: list[Node] = [(seed.host, seed.port) for seed in seeds]
        self.slot = key_slot(anchor)
        self._ranges: list[tuple[int, int, Node]] = []
        """The slot map of the last CLUSTER SLOTS: (first slot, last slot, primary)."""
        self._moved: dict[int, Node] = {}
        """Slots (other than ours) whose owner a MOVED named since the last CLUSTER SLOTS."""

    def at(self, key: str) -> SlotClient:
        """The same interface, sending to the primary of `key`'s slot."""
        return SlotClient(self, key_slot(key))

    async def primaries(self) -> list[SlotClient]:
        """A client for each primary in the slot map (each sends to one slot it serves)."""
        await self._owner_of(self.slot)
        if not self._ranges:  # the map was forgotten (a lost connection): read it again
            self._owner = None
            await self._primary()
        first: dict[Node, int] = {}
        for start, _, primary in self._ranges:
            first.setdefault(primary, start)
        return [SlotClient(self, slot) for slot in sorted(first.values())]

    def by_primary(self, keys: Sequence[str]) -> list[tuple[Pipelined, list[int]]]:
        """The positions of `keys` grouped by the primary that the slot map names for each
        key's slot, each group with a client that pipelines to that primary; a key whose slot
        the map does not know goes alone, through `at`. A command that reaches a primary that
        no longer serves its slot gets a MOVED or ASK reply: the caller sends it again through
        `at`, which follows it."""
        groups: dict[Node, list[int]] = {}
        alone: list[int] = []
        for index, key in enumerate(keys):
            owner = self._lookup(key_slot(key))
            if owner is None:
                alone.append(index)
            else:
                groups.setdefault(owner, []).append(index)
        found: list[tuple[Pipelined, list[int]]] = [
            (NodeClient(self, node), indexes) for node, indexes in groups.items()
        ]
        return found + [(self.at(keys[index]), [index]) for index in alone]

    def share(self, slot: int) -> tuple[int, bool]:
        """How many slots the primary of `slot` serves, and whether the grid's own slot is one
        of them, as the last slot map says (after `primaries`, it is fresh)."""
        owner = self._lookup(slot)
        served = sum(end - start + 1 for start, end, primary in self._ranges if primary == owner)
        return served, owner is not None and self._lookup(self.slot) == owner

    async def _owner_of(self, slot: int) -> Node:
        """The primary of `slot` as last seen (reading the slot map again when unknown)."""
        if slot == self.slot:  # the grid's own slot: the fast path
            return await self._primary()
        owner = self._lookup(slot)
        if owner is None:
            self._owner = None  # one refresh reads the whole map
            await self._primary()
            owner = self._lookup(slot)
            if owner is None:
                raise NotSent(f"no cluster node serves slot {slot}")
        return owner

    def _lookup(self, slot: int) -> Node | None:
        if slot in self._moved:
            return self._moved[slot]
        for start, end, primary in self._ranges:
            if start <= slot <= end:
                return primary
        return None

    def _stale(self, node: Node) -> None:
        """Forget `node` as the owner of any slot: the next command for one reads the map."""
        super()._stale(node)
        self._ranges = [entry for entry in self._ranges if entry[2] != node]
        self._moved = {slot: owner for slot, owner in self._moved.items() if owner != node}

    async def _routed(
        self, commands: Sequence[Command], send: Send, slot: int | None = None
    ) -> list[Any]:
        slot = self.slot if slot is None else slot
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        node = await self._owner_of(slot)
        asking = False
        for _ in range(_MAX_REDIRECTS + 1):
            batch = [commands[i] for i in todo]
            if asking:  # each command of the batch after its own ASKING
                batch = [part for command in batch for part in (("ASKING",), command)]
            try:
                got = await send(self._client(node), batch)
            except ConnectionLost:
                self._stale(node)
                raise
            if asking:
                got = got[1::2]
            redirected: list[int] = []
            target: tuple[str, Node] | None = None
            for index, reply in zip(todo, got, strict=True):
                where = _redirection(reply)
                if where is None:
                    replies[index] = reply
                else:
                    redirected.append(index)
                    target = target or where
            if target is None:
                return replies
            kind, (host, port) = target
            if kind == "ASK" and slot == self.slot:
                for index in redirected:
                    replies[index] = ReplyError(_GRID_SLOT_MIGRATING)
                return replies
            node = (host or node[0], port)  # an empty host: the node that answered
            todo, asking = redirected, kind == "ASK"
            if kind == "MOVED":
                self._learn(node)
                if slot == self.slot:
                    self._owner = node
                else:
                    self._moved[slot] = node
        raise NotSent(f"slot {slot} kept moving ({_MAX_REDIRECTS} redirections)")

    async def _refresh(self) -> Node:
        """Ask the known nodes for CLUSTER SLOTS until one answers; the slot's primary."""
        failures = []
        for node in list(self._known):
            try:
                ranges = await self._client(node).execute("CLUSTER", "SLOTS")
            except (ConnectionLost, ReplyError) as exc:
                failures.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            owner = self._read_slots(ranges, node)
            if owner is not None:
                return owner
            failures.append(f"{node[0]}:{node[1]}: no node serves slot {self.slot}")
        hint = ""
        if any("cluster support disabled" in failure for failure in failures):
            hint = " (a server that is no cluster node: use redis://host:port for it)"
        raise NotSent(f"no cluster node could say who serves slot {self.slot}: {failures}{hint}")

    def _read_slots(self, ranges: list[Any], asked: Node) -> Node | None:
        """Learn every node and the slot map of a CLUSTER SLOTS reply; the primary of our
        slot, if any."""
        owner = None
        self.answered = True
        self._ranges, self._moved = [], {}
        for start, end, primary, *replicas in ranges:
            for entry in (primary, *replicas):
                host = entry[0].decode() or asked[0]  # an empty host: the node asked
                self._learn((host, int(entry[1])))
            node = (primary[0].decode() or asked[0], int(primary[1]))
            self._ranges.append((int(start), int(end), node))
            if start <= self.slot <= end:
                owner = node
        return owner

    def _learn(self, node: Node) -> None:
        if node not in self._known:
            self._known.append(node)


class NodeClient(Pipelined):
    """`pipeline` of a `ClusterClient`, sent as it is to one node (see `by_primary`): a lost
    connection makes the cluster forget the node as an owner of slots."""

    def __init__(self, cluster: ClusterClient, node: Node) -> None:
        self._cluster = cluster
        self._node = node

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        try:
            return await self._cluster._client(self._node).pipeline(commands)
        except ConnectionLost:
            self._cluster._stale(self._node)
            raise


class SlotClient(Pipelined):
    """`execute` and `pipeline` of a `ClusterClient`, sent to the primary of one slot (see
    `ClusterClient.at`)."""

    def __init__(self, cluster: ClusterClient, slot: int) -> None:
        self._cluster = cluster
        self.slot = slot

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one round trip, to the slot's primary."""
        return await self._cluster._routed(
            commands, lambda client, batch: client.pipeline(batch), self.slot
        )

    async def blocking(
        self, commands: Sequence[Command], *, timeout: float | None = None
    ) -> list[Any]:
        """Commands that may block, on a connection of their own, to the slot's primary."""
        return await self._cluster._routed(
            commands, lambda client, batch: client.blocking(batch, timeout=timeout), self.slot
        )


def _redirection(reply: Any) -> tuple[str, Node] | None:
    """("MOVED" or "ASK", node) for a redirection reply; None for any other."""
    if not isinstance(reply, ReplyError):
        return None
    kind, _, rest = str(reply).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    _, _, where = rest.partition(" ")
    host, _, port = where.rpartition(":")
    return kind, (host, int(port))
