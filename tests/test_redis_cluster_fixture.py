"""`girder.testing.RedisClusterServers`: a real cluster forms, fails over, heals and leaves
nothing behind."""

from __future__ import annotations

import os

import pytest
import redis

from girder.testing.redis_cluster import SLOTS, RedisClusterServers
from girder.testing.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_three_primaries_with_a_replica_each_serve_every_slot(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3
    assert len(redis_cluster.running()) == 6
    owners = {redis_cluster.owner(slot).port for slot in range(0, SLOTS, 97)}
    assert owners == {server.port for server in primaries}
    assert redis_cluster_url.startswith("redis+cluster://127.0.0.1:")


def test_a_killed_primary_is_replaced_by_its_replica_and_heals(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    slot = redis_cluster.keyslot("{girder}:x")
    primary = redis_cluster.owner(slot)
    with _client(primary) as client:
        client.set("{girder}:x", "kept")
        assert client.wait(1, 5000) == 1  # the replica has it before the primary dies
    promoted = redis_cluster.fail_over(primary)
    assert promoted is not primary
    assert not primary.running
    assert redis_cluster.owner(slot) is promoted
    assert promoted.command("GET", "{girder}:x") == "kept"
    redis_cluster.heal()
    assert primary.running
    assert len(redis_cluster.primaries()) == 3
    assert primary not in redis_cluster.primaries()  # it came back as a replica


def test_stopping_leaves_no_process_and_no_file() -> None:
    cluster = RedisClusterServers()
    with cluster:
        pids = [server.pid for server in cluster.servers]
        directories = [server.directory for server in cluster.servers]
        assert all(pids)
        assert all(directory.exists() for directory in directories)
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(directory.exists() for directory in directories)


def test_a_write_acknowledged_but_not_replicated_is_lost_in_a_failover(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """Replication is asynchronous: what the primary acknowledged and its replica had not
    received when the primary died is gone after the failover."""
    slot = redis_cluster.keyslot("{girder}:x")
    primary = redis_cluster.owner(slot)
    with _client(primary) as client:
        client.set("{girder}:x", "replicated")
        assert client.wait(1, 5000) == 1
        redis_cluster.stall_replication(primary)
        assert client.set("{girder}:x", "acknowledged, then lost")
        assert client.wait(1, 200) == 0  # no replica has it
    promoted = redis_cluster.fail_over(primary)
    assert promoted.command("GET", "{girder}:x") == "replicated"


def _client(server: RedisServer) -> redis.Redis:
    """A plain client of one node (WAIT counts the writes of its own connection)."""
    return redis.Redis(port=server.port, single_connection_client=True)
