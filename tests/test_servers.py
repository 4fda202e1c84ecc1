"""`StateBackend.servers`: each server's own figures, on one server, on a cluster and in
memory; and where they show: `girder status`, the dashboard's page data and `/metrics`."""

from __future__ import annotations

import asyncio

import pytest
from backends import connected
from prometheus_client.parser import text_string_to_metric_families

from girder.backends.base import NodeKind, ServerLoad
from girder.backends.memory import MemoryBackend
from girder.backends.redis_keys import RedisKeys
from girder.backends.redis_servers import QUERY, SLOTS, server_load
from girder.dashboard import Dashboard, GridModel
from girder.dashboard.metrics import render
from girder.dashboard.server import SERVERS_WAIT_S
from girder.runner import format_status, read_status
from girder.testing.conformance import put
from girder.testing.redis_cluster import RedisClusterServers
from girder.testing.redis_server import RedisServer


@pytest.mark.redis
async def test_one_server_holds_every_slot_and_counts_the_grids_keys(
    redis_server: RedisServer, redis_url: str
) -> None:
    async with connected(redis_url) as backend:
        [before] = await backend.servers()
        await backend.join("w", NodeKind.WORKER, None, 60)
        await put(backend, "c", ["k1", "k2"], into="w")
        [after] = await backend.servers()
    assert before.address == after.address == f"127.0.0.1:{redis_server.port}"
    assert (after.slots, after.grid_slot) == (SLOTS, True)
    assert after.keys == int(redis_server.command("DBSIZE"))
    assert after.keys > before.keys  # the node, its work list and two records at least
    assert after.commands > before.commands
    assert after.memory > 0
    assert after.cpu_seconds >= before.cpu_seconds > 0


@pytest.mark.redis
@pytest.mark.slow
async def test_a_cluster_names_each_primary_once_and_the_one_with_the_grids_slot(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    async with connected(redis_cluster_url) as backend:
        loads = await backend.servers()
    primaries = {f"127.0.0.1:{server.port}" for server in redis_cluster.primaries()}
    assert sorted(load.address for load in loads) == sorted(primaries)
    assert sum(load.slots for load in loads) == SLOTS
    grid_owner = redis_cluster.owner(redis_cluster.keyslot(RedisKeys("girder").leases))
    assert [load.address for load in loads if load.grid_slot] == [f"127.0.0.1:{grid_owner.port}"]


async def test_in_memory_there_is_no_server() -> None:
    backend = MemoryBackend()
    await backend.connect()
    assert await backend.servers() == []
    status = await read_status(backend)
    assert status["servers"] == []
    assert not any(line.startswith("server") for line in format_status(status).splitlines())


def test_replies_that_are_not_a_servers_say_so() -> None:
    assert [command[0] for command in QUERY] == ["INFO", "CLIENT", "DBSIZE"]
    info = b"# Memory\r\nused_memory:1024\r\n# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:0.5\r\n"
    stats = b"total_commands_processed:7\r\ninstantaneous_ops_per_sec:3\r\n"
    client = b"id=3 addr=127.0.0.1:5000 laddr=10.0.0.2:6379 fd=8\n"
    load = server_load([info + stats, client, 12], slots=5, grid_slot=False)
    assert load == ServerLoad("10.0.0.2:6379", 5, False, 1024, 2.0, 7, 3, 12)
    with pytest.raises(ValueError, match="lacks a figure"):
        server_load([info, client, 12], slots=5, grid_slot=False)
    with pytest.raises(ValueError, match="not the replies of a Redis server"):
        server_load([b"x", None, 12], slots=5, grid_slot=False)


@pytest.mark.redis
async def test_girder_status_shows_the_servers(redis_url: str, redis_server: RedisServer) -> None:
    async with connected(redis_url) as backend:
        status = await read_status(backend)
    [server] = status["servers"]  # type: ignore[misc]
    assert server["address"] == f"127.0.0.1:{redis_server.port}"
    table = format_status(status).splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("server"))
    assert "grid slot" in table[header]
    assert "cpu s" in table[header]
    row = table[header + 1].split()
    assert row[:3] == [server["address"], str(SLOTS), "yes"]


def test_the_dashboard_shows_each_servers_share_of_a_core_and_exports_its_figures() -> None:
    model = GridModel()
    grid = ServerLoad("10.0.0.1:7000", 5461, True, 2**21, 10.0, 1000, 50, 40)
    other = ServerLoad("10.0.0.2:7001", 5462, False, 2**20, 4.0, 300, 5, 30)
    model.sample_servers([other, grid], now=100.0)
    assert [s["cpu"] for s in model.snapshot(now=100.0)["servers"]] == [None, None]
    later = [
        ServerLoad("10.0.0.1:7000", 5461, True, 2**21, 10.5, 1500, 50, 40),
        ServerLoad("10.0.0.2:7001", 5462, False, 2**20, 4.1, 350, 5, 30),
    ]
    model.sample_servers(later, now=102.0)
    shown = model.snapshot(now=102.0)["servers"]
    assert [(s["address"], s["grid_slot"]) for s in shown] == [
        ("10.0.0.1:7000", True),
        ("10.0.0.2:7001", False),
    ]
    assert [s["cpu"] for s in shown] == pytest.approx([0.25, 0.05])
    families = {f.name: f for f in text_string_to_metric_families(render(model))}
    cpu = {
        (s.labels["server"], s.labels["grid_slot"]): s.value
        for s in families["girder_redis_cpu_seconds"].samples
    }
    assert cpu == {("10.0.0.1:7000", "true"): 10.5, ("10.0.0.2:7001", "false"): 4.1}
    assert families["girder_redis_cpu_seconds"].type == "counter"
    memory = {s.labels["server"]: s.value for s in families["girder_redis_memory_bytes"].samples}
    assert memory == {"10.0.0.1:7000": 2**21, "10.0.0.2:7001": 2**20}


@pytest.mark.redis
async def test_a_user_without_client_info_gets_the_rest_of_the_status(
    redis_server: RedisServer, redis_url: str
) -> None:
    """An ACL that refuses `CLIENT` costs the servers' table only, said in its place."""
    redis_server.command("ACL", "SETUSER", "watcher", "on", ">pw", "~*", "&*", "+@all", "-client")
    try:
        limited = redis_url.replace("redis://", "redis://watcher:pw@")
        async with connected(limited) as backend:
            await backend.join("w", NodeKind.WORKER, None, 60)
            status = await read_status(backend)
    finally:
        redis_server.command("ACL", "DELUSER", "watcher")
    assert [n["node"] for n in status["nodes"]] == ["w"]  # type: ignore[attr-defined]
    assert status["servers"] == []
    refused = str(status["servers_refused"])
    assert "NOPERM" in refused
    assert "client|info" in refused
    assert ":pw@" not in refused  # the password stays out of the status
    assert (
        format_status(status)
        .splitlines()[-1]
        .startswith("the servers' figures could not be read: ")
    )


class _AwayServers(MemoryBackend):
    """A grid whose servers answer once, then never (a primary failing over, for ever)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def servers(self) -> list[ServerLoad]:
        self.asked += 1
        if self.asked > 1:
            await asyncio.Event().wait()
        return [ServerLoad("10.0.0.1:7000", SLOTS, True, 2**20, 1.0, 10, 1, 3)]


async def test_a_server_that_is_away_keeps_its_last_figures_and_holds_no_event_back() -> None:
    backend = _AwayServers()
    await backend.connect()
    dashboard = Dashboard(backend, port=0)
    await dashboard.refresh()
    await backend.join("w", NodeKind.WORKER, None, 60)
    await asyncio.wait_for(dashboard.refresh(), SERVERS_WAIT_S + 5)
    assert backend.asked == 2
    assert "w" in dashboard.model.nodes
    assert [s.address for s in dashboard.model.servers] == ["10.0.0.1:7000"]
