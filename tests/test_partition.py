"""Hosts that fail and partition: a worker on a host of its own (a network namespace joined to
the Redis host by a veth pair) loses its link mid-job, and gets it back after its lease lapsed;
and the same with a worker that stalls (SIGSTOP) and resumes.

The test makes the namespace and the veth pair itself (root is needed; it is skipped where the
machine cannot make them), on a private /30, and removes them even when it fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from gridfns import (
    add,
    network_namespace,
    partition_job,
    partition_leaf,
    stall_leaf,
    sync_marked_spin,
)
from processes import (
    CLIENT_OPTIONS,
    GridProcesses,
    nodes,
    signal_group,
    wait_for_nodes,
    wait_until,
)

import girder
from girder.testing.redis_server import RedisServer, find_redis_server

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(120)]

SHORT_MS = 2500
"""Leaves the cut-off worker finishes while it is cut off (their completions wait)."""
LONG_MS = 12000
"""Leaves it still runs when its link comes back (it must drop them)."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


class Host:
    """A network namespace (a host of its own) joined to the root namespace by a veth pair:
    `outside` (in the root namespace) is `10.<a>.<b>.1/30`, `inside` is `.2`."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.name = f"girder-part-{tag}"
        self.outside = f"gdp{tag}o"
        self.inside = f"gdp{tag}i"
        self.outside_address, self.inside_address = self._free_subnet(tag)

    @staticmethod
    def _free_subnet(tag: int) -> tuple[str, str]:
        used = _ip("-4", "addr").stdout
        for third in range(tag % 200, tag % 200 + 50):
            base = f"10.213.{third % 256}"
            if f"{base}." not in used:
                return f"{base}.1", f"{base}.2"
        raise RuntimeError("no free 10.213.x.0/30 subnet")

    @property
    def wrapper(self) -> list[str]:
        """The command prefix that runs a process on this host."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        made = _ip("netns", "add", self.name)
        if made.returncode != 0:
            pytest.skip(f"cannot make a network namespace (ip netns add): {made.stderr.strip()}")
        steps = [
            ("link", "add", self.outside, "type", "veth", "peer", "name", self.inside),
            ("link", "set", self.inside, "netns", self.name),
            ("addr", "add", f"{self.outside_address}/30", "dev", self.outside),
            ("link", "set", self.outside, "up"),
            ("-n", self.name, "addr", "add", f"{self.inside_address}/30", "dev", self.inside),
            ("-n", self.name, "link", "set", self.inside, "up"),
            ("-n", self.name, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                raise RuntimeError(f"ip {' '.join(step)} failed: {done.stderr.strip()}")

    def cut(self) -> None:
        """Pull the host's cable: its side of the link goes down."""
        _ip("-n", self.name, "link", "set", self.inside, "down").check_returncode()

    def restore(self) -> None:
        _ip("-n", self.name, "link", "set", self.inside, "up").check_returncode()

    def inode(self) -> str:
        """The namespace's inode, as `gridfns.network_namespace` names it from inside."""
        return str(os.stat(f"/run/netns/{self.name}").st_ino)

    def remove(self) -> None:
        _ip("netns", "del", self.name)  # takes its end of the veth pair, and so the pair
        _ip("link", "del", self.outside)  # in case the pair outlived a half-made namespace


@pytest.fixture
def host() -> Iterator[Host]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and the `ip` command (iproute2)")
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed")
    made = Host()
    try:
        made.create()
        yield made
    finally:
        made.remove()


def _process_exists(pid: int) -> bool:
    """Whether a process (even a zombie) has the id `pid`."""
    return Path(f"/proc/{pid}").exists()


def _marks(directory: Path, event: str, where: str) -> list[int]:
    """The leaf indexes with an `event` mark made in namespace `where`, one per run."""
    found = []
    for path in directory.iterdir():
        kind, index, namespace, _ = path.name.split("-")
        if kind == event and namespace == where:
            found.append(int(index))
    return sorted(found)


async def _lose_a_host_mid_job(
    url: str,
    marks: Path,
    logs: Path,
    *,
    away: str,
    wrapper: Sequence[str],
    cut: Callable[[GridProcesses, subprocess.Popen[bytes]], None],
    restore: Callable[[GridProcesses, subprocess.Popen[bytes]], None],
    finishes_while_away: bool,
) -> None:
    """A worker on a host of its own (started behind `wrapper`, its marks tagged `away`) runs a
    job's leaves; the host is `cut` off, its lease lapses, a worker on this host runs everything
    again; then the host is back (`restore`). The far worker notices it was reaped and drops
    the leaves it still runs; the completions of the leaves it finished late change nothing:
    the value the grid keeps, and the caller gets, once, is the other worker's. With
    `finishes_while_away` the far worker finishes the short leaves before it is back."""
    durations = [SHORT_MS, SHORT_MS, LONG_MS, LONG_MS]
    everything = list(range(len(durations)))
    here = network_namespace()
    procs = GridProcesses(url, logs, GIRDER_IO_CONCURRENCY="8")
    try:
        procs.distributor()
        far = procs.worker("away", wrapper=wrapper)
        await wait_for_nodes(url, workers=1)
        async with girder.Grid.connect(url, **CLIENT_OPTIONS) as client:
            job = client.submit(partition_job, durations, str(marks))

            async def started_away() -> bool:
                return _marks(marks, "start", away) == everything

            await wait_until(started_away, what="every leaf started on the far host")
            cut(procs, far)
            procs.worker("here")

            async def taken_over() -> bool:
                finished_away = _marks(marks, "done", away)
                return _marks(marks, "start", here) == everything and (
                    finished_away == [0, 1] or not finishes_while_away
                )

            await wait_until(taken_over, timeout=40, what="the leaves run again here")
            restore(procs, far)
            result = await asyncio.wait_for(job, 60)

            assert result == [[index * index, here] for index in everything]
            # The leaves the far host finished (late): their completions changed nothing.
            # Those it still ran when it came back: dropped, never completed.
            dropped, finished_away = _marks(marks, "dropped", away), _marks(marks, "done", away)
            assert sorted(dropped + finished_away) == everything
            assert set(dropped) >= {2, 3}
            if finishes_while_away:
                assert finished_away == [0, 1]
            assert _marks(marks, "done", here) == everything

            async def dropped_logged() -> bool:
                return "lease lost: dropped the runs given to others" in procs.log_text()

            await wait_until(dropped_logged, what="the far worker's log line")
            # What the grid keeps is the newer run's: asked again, every leaf comes from the
            # cache (no new run) with the value computed here.
            again = await client.call_all(
                [(partition_leaf, index, ms, str(marks)) for index, ms in enumerate(durations)]
            )
            assert again == [[index * index, here] for index in everything]
            assert _marks(marks, "start", here) == everything
    finally:
        procs.stop_all()


async def test_a_partitioned_worker_drops_its_work_and_no_late_completion_wins(
    host: Host, marks: Path, tmp_path: Path
) -> None:
    """The far worker is on a host of its own (a network namespace); its link is cut
    (`ip link set ... down`) and restored after its lease lapsed. It finishes the short
    leaves while cut off: their completions reach Redis when the link is back."""
    options = ["--bind", "127.0.0.1", host.outside_address, "--protected-mode", "no"]
    with RedisServer(options=options) as server:
        await _lose_a_host_mid_job(
            f"redis://{host.outside_address}:{server.port}/0",
            marks,
            tmp_path / "logs",
            away=host.inode(),
            wrapper=host.wrapper,
            cut=lambda procs, far: host.cut(),
            restore=lambda procs, far: host.restore(),
            finishes_while_away=True,
        )


async def test_a_stalled_worker_drops_its_work_and_no_late_completion_wins(
    redis_url: str, marks: Path, tmp_path: Path
) -> None:
    """The same with a worker that stalls (SIGSTOP of its process group, as a VM paused) and
    resumes (SIGCONT) after its lease lapsed: no root needed. Its short leaves are due the
    moment it resumes: each either finishes (its completion changes nothing) or is dropped,
    whichever comes first; the long ones are dropped."""
    await _lose_a_host_mid_job(
        redis_url,
        marks,
        tmp_path / "logs",
        away="stalled",
        wrapper=["env", "GRIDFNS_HOST=stalled"],
        cut=lambda procs, far: signal_group(far, signal.SIGSTOP),
        restore=lambda procs, far: signal_group(far, signal.SIGCONT),
        finishes_while_away=False,
    )


async def test_a_worker_stalled_past_its_lease_does_not_start_its_stale_claims(
    redis_url: str, marks: Path, tmp_path: Path
) -> None:
    """A worker holds claims it has not started (a batch of quick sync leaves: it waits on the
    second, which holds its loop) when it is stopped (SIGSTOP) past its lease. It is reaped, a
    second worker runs every leaf, then it resumes: it must confirm its lease before it starts
    another claim, learn that it was reaped and drop the claims instead of running them."""
    leaves = 6
    hold = tmp_path / "hold"
    hold.touch()
    procs = GridProcesses(redis_url, tmp_path / "logs", GIRDER_CONCURRENCY="1")
    try:
        procs.distributor()
        stalled = procs.worker("stalled", wrapper=["env", "GRIDFNS_HOST=stalled"])
        await wait_for_nodes(redis_url, workers=1)
        async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as client:
            # Quick sync runs: the worker learns to claim many requests at once.
            await client.call_all([(add, os.getpid(), index) for index in range(30)])
            job = asyncio.create_task(
                client.call_all(
                    [(stall_leaf, index, str(marks), str(hold)) for index in range(leaves)]
                )
            )

            async def waits_behind_a_leaf() -> bool:
                return len(_marks(marks, "start", "stalled")) == 2

            await wait_until(waits_behind_a_leaf, what="the second leaf holding the worker")
            (info,) = [n for n in await nodes(redis_url) if n.node == "stalled"]
            assert info.running >= 2, f"no claim waits behind the leaf the worker runs: {info}"
            started = set(_marks(marks, "start", "stalled"))
            claimed = set(range(leaves)) - started
            signal_group(stalled, signal.SIGSTOP)
            hold.unlink()
            procs.worker("here", wrapper=["env", "GRIDFNS_HOST=here"])
            result = await asyncio.wait_for(job, 60)  # once the stopped worker is reaped
            assert [value for value, _ in result] == [index * index for index in range(leaves)]
            ran_here = _marks(marks, "start", "here")
            assert set(ran_here) >= claimed

            signal_group(stalled, signal.SIGCONT)

            async def back() -> bool:
                alive = [n for n in await nodes(redis_url) if n.node == "stalled" and n.alive]
                return bool(alive) and set(_marks(marks, "done", "stalled")) >= started

            await wait_until(back, what="the stopped worker back in the grid")
            ran_there = _marks(marks, "start", "stalled")
            assert claimed.isdisjoint(ran_there), f"stale claims ran again: {ran_there}"

            async def dropped_logged() -> bool:
                return "lease lost: dropped the runs given to others" in procs.log_text()

            await wait_until(dropped_logged, what="the stalled worker's log line")
    finally:
        procs.stop_all()
    assert claimed.isdisjoint(_marks(marks, "start", "stalled"))
    assert _marks(marks, "start", "here") == ran_here  # each leaf ran here once


async def test_a_worker_stalled_past_its_lease_kills_the_child_running_what_it_lost(
    redis_url: str, tmp_path: Path
) -> None:
    """With `sync_offload="process"`, a worker runs a sync function that spins for a minute in a
    child process when it is stopped (SIGSTOP, child too) past its lease. It is reaped and a
    second worker runs the request. Once it resumes it learns it was reaped and drops the run:
    its child, which would spin on for most of a minute, is killed at once."""
    spins = tmp_path / "spins"
    spins.mkdir()
    procs = GridProcesses(redis_url, tmp_path / "logs", GIRDER_SYNC_OFFLOAD="process")
    try:
        procs.distributor()
        stalled = procs.worker("stalled")
        await wait_for_nodes(redis_url, workers=1)
        async with girder.Grid.connect(redis_url, **CLIENT_OPTIONS) as client:
            handle = client.submit(sync_marked_spin, 60_000, str(spins))

            def children() -> list[int]:
                return [int(mark.name.removeprefix("spinning-")) for mark in spins.iterdir()]

            async def spinning(count: int) -> bool:
                return len(children()) == count

            await wait_until(lambda: spinning(1), what="the spin to start in a child")
            (child,) = children()
            signal_group(stalled, signal.SIGSTOP)
            procs.worker("here")
            await wait_until(lambda: spinning(2), what="the request to run again elsewhere")
            signal_group(stalled, signal.SIGCONT)

            async def child_gone() -> bool:
                return not _process_exists(child)

            await wait_until(child_gone, timeout=15, what=f"the stale run's child {child} killed")
            assert handle.cancel()
    finally:
        procs.stop_all()
