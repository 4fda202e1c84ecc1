"""Seeded chaos against a grid of real processes on a real Redis Cluster (3 primaries, 3
replicas): the faults of Redis are failovers of the grid's primary and of the others (where
blobs live), some with their acknowledged writes lost, each healed after, and moves of the
grid's slot to another primary (chaos_cluster.py).

    pytest tests/test_chaos_cluster.py                          # the short run (32 s)
    GIRDER_CHAOS_SEED=25 GIRDER_CHAOS_SECONDS=32 pytest tests/test_chaos_cluster.py -k short
    GIRDER_CHAOS_LONG=1 GIRDER_CHAOS_SECONDS=600 pytest tests/test_chaos_cluster.py -k long

Both runs draw every kind of fault, failovers that lose writes included (their defects are
fixed: see docs/scaling.md, "Testing on a real cluster").
GIRDER_CHAOS_FAULTS=lose_writes_grid,kill_worker draws only those kinds (see
chaos.CLUSTER_FAULTS). As in test_chaos.py, each run prints its schedule first (and the line
that replays it) and a summary at the end; `report.txt` and every process's log stay under the
test's tmp dir. The long run at 300 s took 12 minutes (the checks of 665,000 cached results
take one or two)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import redis
from chaos import (
    CLUSTER_FAULTS,
    LONG_ENV,
    NOTES_ENV,
    SECONDS_ENV,
    SERVER_FAULTS,
    ChaosConfig,
    check_chaos,
    fault_weights,
    make_plan,
    make_schedule,
)
from chaos_checks import (
    KEYS,
    LEASE,
    PREFIX,
    Failover,
    Run,
    Timeline,
    blob_leaks,
    check_leaks,
    find_overlaps,
    rerun_reason,
)
from chaos_cluster import ClusterChaosRun

from girder.backends import redis_keys
from girder.testing.redis_cluster import RedisClusterServers

SHORT_SECONDS = 32.0
LONG_SECONDS = 600.0
DEFAULT_SEED = 1431
"""A seed whose 32 s schedule has every kind of fault (few do: 512, 1337, 1431, 1884 and 2860
of the first 3,000): 6 failovers, 4 of the grid's primary and 2 of another one, each at
least once with its writes lost and once without, 2 moves of the grid's slot, and 9 faults
of processes."""
_seconds = float(os.environ.get(SECONDS_ENV, "0")) or None


async def _chaos(
    config: ChaosConfig,
    cluster: RedisClusterServers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GIRDER_SECRET", config.secret)
    await check_chaos(ClusterChaosRun(config, cluster, tmp_path))


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout((_seconds or SHORT_SECONDS) + 240)
async def test_chaos_cluster_short(
    redis_cluster: RedisClusterServers,
    redis_cluster_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """About 32 s of faults with the default seed (GIRDER_CHAOS_SEED / _SECONDS replay). The
    clients and every other worker keep their notifications in their own slots, the other
    workers in the grid's (GIRDER_CHAOS_SPREAD_NOTIFICATIONS chooses otherwise): both ways, and
    the posts between them, under failovers and moves of the grid's slot."""
    config = ChaosConfig.from_env(SHORT_SECONDS, cluster=True, default_seed=DEFAULT_SEED)
    if NOTES_ENV not in os.environ:
        config = dataclasses.replace(config, spread_notifications="mixed")
    await _chaos(config, redis_cluster, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout((_seconds or LONG_SECONDS) + 600)
async def test_chaos_cluster_long(
    redis_cluster: RedisClusterServers,
    redis_cluster_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Opt-in: GIRDER_CHAOS_LONG=1 (length GIRDER_CHAOS_SECONDS, default 600 s)."""
    if os.environ.get(LONG_ENV) != "1":
        pytest.skip(f"the long chaos run is opt-in: {LONG_ENV}=1")
    config = ChaosConfig.from_env(LONG_SECONDS, cluster=True, default_seed=DEFAULT_SEED)
    await _chaos(config, redis_cluster, tmp_path, monkeypatch)


# -- the harness itself (quick) --------------------------------------------------------------------


def test_a_cluster_schedule_has_failovers_and_no_faults_of_one_server() -> None:
    kinds = {f.kind for f in make_schedule(DEFAULT_SEED, LONG_SECONDS, proxy=True, cluster=True)}
    assert set(CLUSTER_FAULTS) <= kinds
    assert not kinds & set(SERVER_FAULTS)
    nodes = ("worker", "client", "distributor")
    assert all(k in CLUSTER_FAULTS or k.endswith(nodes) for k in kinds)
    short = make_schedule(DEFAULT_SEED, SHORT_SECONDS, proxy=False, cluster=True)
    assert {f.kind for f in short} == set(fault_weights(proxy=False, cluster=True))


def test_a_cluster_plan_passes_blobs_and_the_plans_of_one_server_stay() -> None:
    plain = make_plan(5, 0)
    assert "salted_blobs" not in {j.fn for j in plain}
    assert "salted_blobs" in {j.fn for j in make_plan(5, 0, blobs=True)}
    assert ChaosConfig(cluster=True).use_proxy is False


def test_a_failover_of_the_grids_primary_excuses_a_rerun_whose_writes_it_may_have_lost() -> None:
    """Acknowledged writes since the stall (or the kill) are lost: a run that ended within a
    lease of that, or started before the replica took over, may run again; one that finished
    well before, or started after the promotion, may not. A failover of a primary of blobs
    excuses only a rerun of a value stored in its window (its bytes lost), and no overlap."""
    timeline = Timeline(start=0.0)
    timeline.failovers.append(Failover(7001, True, lost_from=10.0, killed=11.0, promoted=13.0))
    rerun = Run("k", 2, "w2", 20.0, 21.0, "ok")

    def reason(first: Run) -> str:
        return rerun_reason(first, rerun, timeline, "always")

    assert "failover" in reason(Run("k", 1, "w1", 9.0, 10.5, "ok"))
    assert "failover" in reason(Run("k", 1, "w1", 5.0, 10.0 - LEASE / 2, "ok"))
    assert reason(Run("k", 1, "w1", 5.0, 10.0 - 2 * LEASE, "ok")).startswith("UNEXPLAINED")
    assert reason(Run("k", 1, "w1", 14.0, 15.0, "ok")).startswith("UNEXPLAINED")
    overlap = [Run("k", 1, "w1", 12.0, 30.0, "ok"), Run("k", 2, "w2", 14.0, 15.0, "ok")]
    (found,) = find_overlaps(overlap, timeline, "always")
    assert found.kind == "failover lost writes"
    timeline.failovers[0] = Failover(7002, False, lost_from=10.0, killed=11.0, promoted=13.0)
    assert "bytes of its value" in reason(Run("k", 1, "w1", 9.0, 10.5, "ok"))
    assert reason(Run("k", 1, "w1", 5.0, 10.0 - 2 * LEASE, "ok")).startswith("UNEXPLAINED")
    assert reason(Run("k", 1, "w1", 14.0, 15.0, "ok")).startswith("UNEXPLAINED")
    assert find_overlaps(overlap, timeline, "always")[0].excuse is None


@pytest.mark.redis
def test_blobs_left_must_be_held_indexed_and_stored(redis_url: str) -> None:
    """After the sweep, a blob held by a cached result is no leak, nor is one whose bytes a
    failover lost (whoever asks for the value has it computed again); bytes without an index
    entry are (no sweep finds them), and so is an index entry whose bytes are gone that no
    cached result holds."""
    held, lost, orphan, dangling = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    db = redis.Redis.from_url(redis_url)
    try:
        db.hset(KEYS.record("k"), redis_keys.F_STATUS, "d")
        for digest in (held, lost):
            db.sadd(PREFIX + redis_keys.BLOB_HOLDERS + digest, "k")
        for digest in (held, lost, dangling):
            db.zadd(KEYS.blobs, {digest: 1})
        for digest in (held, orphan):
            db.set(KEYS.blob(digest), b"bytes")
            db.set(KEYS.blob_gen(digest), b"token")
        indexed, rightly_held, lost_values, found = blob_leaks(db, [db])
        assert (indexed, rightly_held, lost_values) == ({held, lost, dangling}, {held}, {lost})
        assert [example.split()[0] for examples in found.values() for example in examples] == [
            dangling,
            orphan + ":",
        ]
        report = check_leaks(db, {}, [db])
        assert (report.cached, report.cached_blobs, report.lost_values) == (1, 1, 1)
        assert report.leaked == found
    finally:
        db.close()


def test_a_completion_held_up_by_a_failover_may_be_lost_to_a_later_stop() -> None:
    """seed 2: two runs ended as the primary of their values' blobs died; their completions
    waited for its replica, and their worker was stopped past its lease after the promotion,
    before they were stored: the keys ran again elsewhere."""
    timeline = Timeline(start=0.0, stops=[(1, 25.9, 28.6)])
    first, second = Run("k", 1, "w3", 23.3, 23.35, "ok"), Run("k", 2, "w6", 27.6, 27.7, "ok")
    assert rerun_reason(first, second, timeline, "always").startswith("UNEXPLAINED")
    timeline.failovers.append(Failover(7002, False, lost_from=23.4, killed=23.4, promoted=25.3))
    assert "SIGSTOPped" in rerun_reason(first, second, timeline, "always")
