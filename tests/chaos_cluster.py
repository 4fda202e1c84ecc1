"""The chaos harness (chaos.py) on a real Redis Cluster (`RedisClusterServers`, 3 primaries and
3 replicas): the faults of Redis are failovers, and moves of the grid's slot.

A failover kills a primary with kill -9 and waits until its replica serves its slots, then after
a while heals the cluster (the dead server comes back as a replica). The primary is the one of
the grid's slot (`*_grid`: every node loses its connection and the grid's state moves), or
another one (`*_blobs`: only the bytes of blobs, spread over the primaries by digest, live
there). `lose_writes_*` first stalls its replication (`stall_replication`): what it acknowledges
until the kill is lost with it, which the nodes must survive at the cost of running keys again
(docs/scaling.md, "Failover, and what asynchronous replication can lose"). `move_slot_grid`
moves the grid's slot to another primary, as a resharding does: nothing may be lost or run
twice. One cluster fault runs at a time, beside the faults of the processes; the values of a
fifth of the jobs are blobs (GIRDER_LARGE_VALUE_BYTES is `chaos.LARGE_VALUE_BYTES` for every
process).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import redis
from chaos import (
    CLUSTER_FAULTS,
    LARGE_VALUE_BYTES,
    ChaosConfig,
    ChaosRun,
    ClientSlot,
    Fault,
    Handler,
)
from chaos_checks import PREFIX, Failover
from chaos_client import read_events
from processes import wait_until

from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer

ANCHOR = PREFIX + "leases"
"""A key of the grid's slot."""


class ClusterChaosRun(ChaosRun):
    """A chaos run on a Redis Cluster: failovers instead of the faults of one server."""

    def __init__(self, config: ChaosConfig, cluster: RedisClusterServers, tmp: Path) -> None:
        self.cluster = cluster
        self.failing = asyncio.Lock()
        """Held by the cluster fault under way (a primary without its replica cannot fail
        over again until healed)."""
        self.served = asyncio.Event()
        """Clear from just before a primary is killed until its replica took over."""
        self.served.set()
        self.starting: list[Callable[[], bool]] = []
        """Per process started: whether it is past its connect (or dead)."""
        super().__init__(config, tmp, cluster.url)

    # A node fails at start when the primary the cluster names cannot be reached (connect
    # fails at once, by design: see RedisBackend.connect): a supervisor would start it again.
    # This run starts no process from just before a kill until the replica took over, and
    # kills no primary while a process it started is connecting.

    def start_distributor(self) -> None:
        def start() -> None:
            log = self.logs / f"distributor-{self.config.pool}.log"
            offset = log.stat().st_size if log.exists() else 0
            ChaosRun.start_distributor(self)
            assert self.distributor is not None
            self._track(self.distributor, lambda: _logged(log, offset, b"'node started'"))

        self._when_served(start)

    def start_worker(self) -> None:
        def start() -> None:
            ChaosRun.start_worker(self)
            name, proc = f"w{self.worker_count}", self.workers[f"w{self.worker_count}"]
            self._track(proc, lambda: _logged(self.logs / f"{name}.log", 0, b"'node started'"))

        self._when_served(start)

    def start_client(self, slot: ClientSlot) -> None:
        def start() -> None:
            ChaosRun.start_client(self, slot)
            proc = slot.proc
            assert proc is not None
            self._track(proc, lambda: _said_hello(slot, proc.pid))

        self._when_served(start)

    def _track(self, proc: subprocess.Popen[bytes], connected: Callable[[], bool]) -> None:
        self.starting.append(lambda: proc.poll() is not None or connected())

    async def _all_connected(self) -> bool:
        self.starting = [check for check in self.starting if not check()]
        return not self.starting

    def _when_served(self, start: Callable[[], None]) -> None:
        if self.served.is_set():
            start()
            return

        async def start_when_served() -> None:
            await self.served.wait()
            start()

        self.meanwhile(start_when_served())

    @property
    def fsync(self) -> str:
        return "n/a (a cluster: failovers lose writes, restarts none)"

    def describe_redis(self) -> str:
        return (
            f"Redis Cluster of {len(self.cluster.servers)} servers (primaries with a replica "
            f"each), large_value_bytes {LARGE_VALUE_BYTES}"
        )

    def redis_faults(self) -> dict[str, Handler]:
        faults = dict.fromkeys(CLUSTER_FAULTS, self._fail_over)
        faults["move_slot_grid"] = self._move_slot
        return faults

    async def _move_slot(self, fault: Fault) -> bool:
        """Start moving the grid's slot; it waits for the cluster fault under way, if any."""
        self.meanwhile(self._slot_move(fault))
        return True

    async def _slot_move(self, fault: Fault) -> None:
        """Move the grid's slot to another primary (by `pick`), `fault.amount` keys per
        MIGRATE, `fault.length` seconds apart."""
        async with self.failing:
            slot = self.cluster.keyslot(ANCHOR)
            target = self._target(grid=False, pick=fault.pick)
            self.timeline.add("slot move", f"grid's slot to port {target.port}")
            moved = await asyncio.to_thread(
                self.cluster.move_slot, slot, target, int(fault.amount), fault.length
            )
            self.timeline.add("slot moved", f"{moved} keys")

    async def _fail_over(self, fault: Fault) -> bool:
        """Start the failover; it waits for the one under way, if any."""
        self.meanwhile(self._failover(fault))
        return True

    async def _failover(self, fault: Fault) -> None:
        """(Stall the replication,) kill -9 the primary, wait for its replica to take over,
        heal after `fault.length`."""
        async with self.failing:
            grid = fault.kind.endswith("_grid")
            self.served.clear()
            try:
                await wait_until(self._all_connected, timeout=60, what="starts to connect")
                primary = await asyncio.to_thread(self._target, grid=grid, pick=fault.pick)
                what = f"{'grid' if grid else 'blobs'} primary port {primary.port}"
                lost_from = None
                if fault.kind.startswith("lose_writes"):
                    lost_from = self.timeline.add("stall replication", what, primary.pid).t
                    await asyncio.to_thread(self.cluster.stall_replication, primary)
                    await asyncio.sleep(fault.amount)
                killed = self.timeline.add("primary kill -9", what, primary.pid).t
                replica = await asyncio.to_thread(self.cluster.fail_over, primary)
            finally:
                self.served.set()
            promoted = self.timeline.add("replica promoted", f"port {replica.port}").t
            failover = Failover(primary.port, grid, lost_from or killed, killed, promoted)
            self.timeline.failovers.append(failover)
            await asyncio.sleep(fault.length)
            await self._heal()

    def _target(self, *, grid: bool, pick: int) -> RedisServer:
        """The primary of the grid's slot, or one of the others (by `pick`)."""
        owner = self.cluster.owner(self.cluster.keyslot(ANCHOR))
        if grid:
            return owner
        others = sorted(
            (p for p in self.cluster.primaries() if p is not owner), key=lambda p: p.port
        )
        return others[pick % len(others)]

    async def _heal(self) -> None:
        self.timeline.add("heal", "dead servers start again, as replicas")
        await asyncio.to_thread(self.cluster.heal)
        self.timeline.add("healed", "every primary has its replica")

    async def calm_redis(self) -> None:
        await self._heal()

    def release_redis(self) -> None:
        """Nothing: a failover under way has ended (`calm` waits for it)."""

    def db(self) -> redis.Redis:
        owner = self.cluster.owner(self.cluster.keyslot(ANCHOR))
        return redis.Redis(host="127.0.0.1", port=owner.port)

    def servers(self) -> list[redis.Redis]:
        return [redis.Redis(host="127.0.0.1", port=p.port) for p in self.cluster.primaries()]


def _logged(log: Path, offset: int, marker: bytes) -> bool:
    """Whether `log` says `marker` after its first `offset` bytes."""
    with log.open("rb") as file:
        file.seek(offset)
        return marker in file.read()


def _said_hello(slot: ClientSlot, pid: int) -> bool:
    """Whether client process `pid` of `slot` is connected (its `hello`)."""
    return any(e["event"] == "hello" and e["pid"] == pid for e in read_events(slot.answers))
