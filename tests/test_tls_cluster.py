"""girder on a real Redis Cluster that speaks only TLS (`rediss+cluster://`; every node with
`tls-port`, `tls-cluster yes` and `tls-replication yes`): the conformance suite, a grid, the slot
map's TLS ports, and a failover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gridfns import add, fib

import girder
from girder.backends import open_backend
from girder.backends.base import NodeKind, StateBackend
from girder.backends.cluster import ClusterClient, parse_cluster_url
from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.errors import BackendError
from girder.testing.conformance import BackendConformance, put
from girder.testing.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "conformance"


TLS_CLUSTER_CASES = frozenset(
    {
        "test_is_a_state_backend",
        "test_submit_with_dispatch_hands_the_work_to_waiting_volunteers",
        "test_three_step_cycle",
        "test_wait_and_claim_wakes_up_holding_the_pushed_request",
        "test_complete_and_claim_completes_in_order_then_claims_from_the_top",
        "test_take_notifications_wakes_when_one_arrives",
        "test_no_notification_is_lost_or_repeated",
        "test_cancel_follows_the_wait_edges_down",
        "test_wait_for_work_wakes_on_a_push",
        "test_volunteering_wakes_a_distributor_with_work",
        "test_reap_requeues_a_dead_nodes_work_at_its_distributor",
        "test_payloads_and_outcomes_of_every_size_come_back_whole",
        "test_events_follow_a_request_from_submit_to_finish",
        "test_a_blob_is_read_back_whole",
        "test_a_sweep_goes_through_many_blobs",
        "test_flush_deletes_everything",
    }
)
"""The suite's cases that run over TLS on the cluster: blocking waits, notifications, blobs on
every primary and a flush of them all. The whole suite runs over TLS on one server
(test_tls.py) and in plain text on the cluster; here, where each test's connections to three
primaries cost a TLS handshake each, the whole suite took CI about 30 s."""


def only_tls_cluster_cases(suite: type[BackendConformance]) -> type[BackendConformance]:
    """`suite` with the tests not in TLS_CLUSTER_CASES taken out of collection."""
    for name in dir(BackendConformance):
        if name.startswith("test_") and name not in TLS_CLUSTER_CASES:
            setattr(suite, name, None)
    return suite


@only_tls_cluster_cases
class TestTlsRedisClusterBackend(BackendConformance):
    @pytest.fixture
    async def backend(self, tls_redis_cluster_url: str) -> AsyncIterator[StateBackend]:
        backend = open_backend(tls_redis_cluster_url, settings=Settings(key_prefix=PREFIX))
        assert isinstance(backend, RedisBackend)
        await backend.connect()
        yield backend
        await backend.close()


@pytest.fixture
async def backend(tls_redis_cluster_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(tls_redis_cluster_url, settings=Settings(key_prefix=PREFIX))
    await backend.connect()
    yield backend
    await backend.close()


async def test_the_slot_map_names_the_tls_ports(
    tls_redis_cluster: RedisClusterServers, tls_redis_cluster_url: str
) -> None:
    """Asked over TLS, the nodes name their TLS ports (the only ones they listen on) in
    CLUSTER SLOTS, so a client given one seed reaches every primary."""
    ports = {server.port for server in tls_redis_cluster.servers}
    slots = tls_redis_cluster.servers[0].command("CLUSTER", "SLOTS")
    assert isinstance(slots, list)
    named = {int(str(node[1])) for row in slots for node in row[2:] if isinstance(node, list)}
    assert named == ports
    assert tls_redis_cluster_url.startswith("rediss+cluster://127.0.0.1:")
    first_seed, _, query = tls_redis_cluster_url.partition(",")
    client = ClusterClient(parse_cluster_url(f"{first_seed}?{query.partition('?')[2]}"), "x")
    try:
        reached = set()
        for primary in await client.primaries():
            reply = await primary.execute("CONFIG", "GET", "tls-port")
            reached.add(int(reply[1]))
    finally:
        client.close()
    assert reached == {server.port for server in tls_redis_cluster.primaries()}


async def test_a_grid_runs_on_the_tls_cluster(tls_redis_cluster_url: str) -> None:
    async with girder.Grid.local(workers=2, backend=tls_redis_cluster_url) as grid:
        assert await asyncio.wait_for(grid.call(fib, 40), 30) == 102334155
        assert await grid.call_all([(add, i, 1) for i in range(20)]) == list(range(1, 21))


async def test_a_certificate_that_cannot_be_verified_says_so(
    tls_redis_cluster: RedisClusterServers, tls_redis_cluster_url: str
) -> None:
    seed = tls_redis_cluster.servers[0]
    backend = RedisBackend(f"rediss+cluster://127.0.0.1:{seed.port}")
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(backend.connect(), 10)
    await backend.close()
    assert f"the TLS certificate of 127.0.0.1:{seed.port} could not be verified" in str(
        caught.value
    )


async def test_work_goes_on_when_a_primary_dies_and_its_replica_takes_over(
    backend: RedisBackend, tls_redis_cluster: RedisClusterServers
) -> None:
    """The replica was fed over TLS (tls-replication) and is reached over TLS after the
    failover."""
    await backend.join("w", NodeKind.WORKER, None, 60)
    await put(backend, "c", ["k2", "k1"], into="w")
    owner = tls_redis_cluster.owner(tls_redis_cluster.keyslot(f"{{{PREFIX}}}:leases"))
    assert tls_redis_cluster.replicas_of(owner)
    tls_redis_cluster.wait_replicated(owner)  # nothing is lost with the primary
    claiming = asyncio.create_task(backend.claim("w"))
    tls_redis_cluster.fail_over(owner)
    assert await asyncio.wait_for(claiming, 30) is not None
    assert await backend.claim("w") is not None
    assert await backend.claim("w") is None
    assert [info.node for info in await backend.nodes()] == ["w"]
