"""`RedisClusterServers`: a throw-away Redis Cluster of `redis-server` processes for tests.

By default 3 primaries and 3 replicas (one each), every one a `RedisServer` started with
`--cluster-enabled yes` on a free loopback port in its own temporary directory, joined with
`redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`. `start` returns once every
node says `cluster_state:ok`, knows every other node, and every replica's link to its primary is
up. `fail_over(server)` kills a primary with SIGKILL and waits for one of its replicas to be
promoted; `heal()` starts the dead servers again (they rejoin as replicas) and waits for the
cluster to be whole; `move_slot(slot, to)` migrates a slot key by key, as a resharding
does. `stop()` leaves no process and no file behind.

The node timeout is short (1 s; Redis's default is 15 s) so that a failover takes a few seconds.
With `tls=` (certificates from `girder.testing.tls`) every node speaks only TLS, to clients, on
the cluster bus and for replication (`--tls-cluster yes --tls-replication yes`), and `url` is a
`rediss+cluster://` URL that trusts the test CA. Like `redis_server`, only the standard library
is used.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from urllib.parse import quote

from girder.testing.redis_server import RedisServer, find_redis_server, free_port, wait_replicated
from girder.testing.started import Started
from girder.testing.tls import Certificates

SLOTS = 16384


def find_redis_cli() -> str | None:
    """The path of a `redis-cli` binary on PATH, or None."""
    return shutil.which("redis-cli")


class RedisClusterServers(Started):
    """`primaries` primaries with `replicas` replicas each, on 127.0.0.1; `start` it, or use it
    as a context."""

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        timeout: float = 60.0,
        tls: Certificates | None = None,
    ) -> None:
        """`timeout`: seconds that starting, a failover or healing may take before it is an
        error; `tls`: every node speaks only TLS, with these certificates."""
        binary, cli = find_redis_server(), find_redis_cli()
        if binary is None or cli is None:
            raise FileNotFoundError("no redis-server or redis-cli binary on PATH")
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self.cli = cli
        self._stalled: list[RedisServer] = []
        self.replicas = replicas
        self.timeout = timeout
        self.tls = tls
        options: tuple[str, ...] = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
        )  # fmt: skip
        if tls is not None:
            options += ("--tls-cluster", "yes", "--tls-replication", "yes")
        # The bus port is chosen too: the default (port + 10000) may be taken or past 65535.
        self.servers = [
            RedisServer(binary, options=(*options, "--cluster-port", str(free_port())), tls=tls)
            for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """`redis+cluster://` URL listing every node as a seed (`rediss+cluster://`, trusting
        the test CA, with `tls`)."""
        seeds = ",".join(f"127.0.0.1:{server.port}" for server in self.servers)
        if self.tls is None:
            return f"redis+cluster://{seeds}"
        return f"rediss+cluster://{seeds}?ssl_ca_certs={quote(str(self.tls.ca))}"

    def start(self) -> None:
        """Start every server, create the cluster, and wait until it is whole."""
        for server in self.servers:
            server.start()
        addresses = [f"127.0.0.1:{server.port}" for server in self.servers]
        replicas = ("--cluster-replicas", str(self.replicas), "--cluster-yes")
        tls = () if self.tls is None else ("--tls", "--cacert", str(self.tls.ca))
        created = subprocess.run(
            [self.cli, *tls, "--cluster", "create", *addresses, *replicas],
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        self._wait(self._whole, "the cluster to form")

    def running(self) -> list[RedisServer]:
        return [server for server in self.servers if server.running]

    def primaries(self) -> list[RedisServer]:
        """The running servers that are primaries now."""
        return [server for server in self.running() if _role(server) == "master"]

    def owner(self, slot: int) -> RedisServer:
        """The running primary that serves `slot`, as the running nodes see it."""
        for server in self.running():
            for start, end, port in _slots(server):
                if start <= slot <= end:
                    return next(s for s in self.servers if s.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def keyslot(self, key: str) -> int:
        """The slot of `key` (asked of a node)."""
        reply = self.running()[0].command("CLUSTER", "KEYSLOT", key)
        assert isinstance(reply, str)
        return int(reply)

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        """The running replicas of `primary`."""
        found = []
        for server in self.running():
            replication = server.info("replication")
            if replication.get("master_port") == str(primary.port):
                found.append(server)
        return found

    def wait_replicated(self, primary: RedisServer) -> None:
        """Wait until the running replicas of `primary` hold every write it has made so far."""
        wait_replicated(primary, self.replicas_of(primary))

    def stall_replication(self, primary: RedisServer, backlog: int = 32 << 20) -> None:
        """Make the writes `primary` acknowledges from now on unreplicated, so that a failover
        loses them (as asynchronous replication may): its replicas are stopped (SIGSTOP) and
        `backlog` bytes of filler fill their links first. `fail_over` resumes them."""
        filler = self._key_on(primary)  # before any pause: a paused node cannot say a slot
        for replica in self.replicas_of(primary):
            replica.pause()
            self._stalled.append(replica)
        primary.command("SET", filler, "x" * backlog)

    def _key_on(self, primary: RedisServer) -> str:
        """A key that `primary` serves."""
        ranges = [(start, end) for start, end, port in _slots(primary) if port == primary.port]
        for index in range(100_000):
            key = f"girder-filler-{index}"
            slot = self.keyslot(key)
            if any(start <= slot <= end for start, end in ranges):
                return key
        raise LookupError(f"no key found for the primary on port {primary.port}")

    def fail_over(self, primary: RedisServer) -> RedisServer:
        """SIGKILL `primary` (then resume any replica `stall_replication` stopped) and wait
        until one of its replicas serves its slots; that one."""
        slots = [start for start, _, port in _slots(primary) if port == primary.port]
        if not slots:
            raise ValueError(f"the server on port {primary.port} is no primary")
        primary.kill()
        while self._stalled:
            self._stalled.pop().resume()
        self._wait(
            lambda: self._all_ok() and self.owner(slots[0]) is not primary,
            f"a replica of port {primary.port} to take over",
        )
        return self.owner(slots[0])

    def heal(self) -> None:
        """Start every dead server again (it rejoins as a replica) and wait until the cluster
        is whole and every replica holds what its primary wrote: a replica's link is up once
        it loaded its primary's snapshot, and the writes made meanwhile follow, so a failover
        just then would lose seconds of writes."""
        for server in self.servers:
            if not server.running:
                server.start()
        self._wait(self._whole, "the cluster to heal")
        for primary in self.primaries():
            self.wait_replicated(primary)

    def move_slot(self, slot: int, to: RedisServer, batch: int = 10, pause: float = 0.0) -> int:
        """Move `slot` to the primary `to` as `redis-cli --cluster reshard` does: its keys
        `batch` at a time (`pause` seconds apart) until none is left, between
        `begin_slot_move` and `end_slot_move`. Returns how many keys moved."""
        source = self.begin_slot_move(slot, to)
        moved = 0
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", str(slot), str(batch)):
            assert isinstance(keys, list)
            moved += self.migrate_keys(source, to, [str(key) for key in keys])
            time.sleep(pause)
        self.end_slot_move(slot, to)
        return moved

    def begin_slot_move(self, slot: int, to: RedisServer) -> RedisServer:
        """Mark `slot` importing on `to` and migrating on its owner; that owner."""
        source = self.owner(slot)
        source_id, target_id = (str(s.command("CLUSTER", "MYID")) for s in (source, to))
        to.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        return source

    def migrate_keys(self, source: RedisServer, to: RedisServer, keys: list[str]) -> int:
        """MIGRATE `keys` from `source` to `to`, without REPLACE: a key the target has already
        (written there during the move) fails it (BUSYKEY). Returns how many."""
        if keys:
            source.command("MIGRATE", "127.0.0.1", str(to.port), "", "0", "5000", "KEYS", *keys)
        return len(keys)

    def end_slot_move(self, slot: int, to: RedisServer) -> None:
        """Give `slot` to `to` on every primary (its keys must have moved)."""
        target_id = str(to.command("CLUSTER", "MYID"))
        for server in self.primaries():
            server.command("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def flush(self) -> None:
        """Delete every key (FLUSHALL on every primary; replicas follow)."""
        for server in self.primaries():
            server.command("FLUSHALL")

    def _all_ok(self) -> bool:
        return all(_info(server)["cluster_state"] == "ok" for server in self.running())

    def _whole(self) -> bool:
        """Every node runs, says ok and knows every other; every replica's link is up."""
        if len(self.running()) < len(self.servers) or not self._all_ok():
            return False
        for server in self.servers:
            if int(_info(server)["cluster_known_nodes"]) != len(self.servers):
                return False
            replication = server.info("replication")
            if replication.get("role") == "slave":
                if replication.get("master_link_status") != "up":
                    return False
            elif int(replication.get("connected_slaves", "0")) < self.replicas:
                return False
        return True

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if condition():
                    return
            except (OSError, RuntimeError, LookupError, KeyError):
                pass  # a node not answering yet, or between states
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {self.timeout} s waiting for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every server and delete its directory."""
        while self._stalled:
            self._stalled.pop().resume()
        for server in self.servers:
            server.stop()


def _info(server: RedisServer) -> dict[str, str]:
    """`CLUSTER INFO` of `server` as a dict."""
    text = server.command("CLUSTER", "INFO")
    assert isinstance(text, str)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _role(server: RedisServer) -> str:
    return server.info("replication").get("role", "")


def _slots(server: RedisServer) -> list[tuple[int, int, int]]:
    """(first slot, last slot, port of its primary) per range of `CLUSTER SLOTS` of `server`."""
    reply = server.command("CLUSTER", "SLOTS")
    assert isinstance(reply, list)
    ranges = []
    for row in reply:
        assert isinstance(row, list)
        assert isinstance(row[2], list)
        ranges.append((int(str(row[0])), int(str(row[1])), int(str(row[2][1]))))
    return ranges
