"""Running grid nodes as processes: what `girder worker`, `distributor` and `status` do
(`girder up` is `girder.supervisor`).

`serve` starts nodes on this event loop and keeps them running until SIGTERM or SIGINT; then it
stops them gracefully: a worker stops taking work, cancels what it was running and hands its
stack and running requests back to its distributor (`StateBackend.leave`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence

from girder.backends import open_backend
from girder.backends.base import NodeInfo, StateBackend
from girder.config import Settings
from girder.errors import BackendError, ConfigurationError
from girder.log import configure, node_logger
from girder.scheduler import Distributor, Node, Worker
from girder.watchdog import WorkerSupervisor, supervised

_CONNECT_RETRY_FIRST = 0.1
_CONNECT_RETRY_MAX = 2.0
"""Seconds between a node process's attempts to reach its backend at start: doubling."""


def import_modules(modules: Sequence[str]) -> None:
    """Import the modules that define grid functions (the working directory is importable)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import module {module!r} (--import, GIRDER_IMPORTS): {exc}"
            ) from exc


async def serve(settings: Settings, nodes: Sequence[Node]) -> None:
    """Start `nodes`, run until SIGTERM/SIGINT, then stop them gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    backend = nodes[0].backend
    if not await connect_when_reachable(nodes[0], settings, stop):
        return  # stopped before the backend answered: nothing started
    try:
        for node in nodes:
            await node.start()
        await stop.wait()
    finally:
        for node in reversed(nodes):
            await node.stop()
        await backend.close()


async def connect_when_reachable(node: Node, settings: Settings, stop: asyncio.Event) -> bool:
    """Connect the backend of a node process, waiting for one that cannot be reached yet (a
    restart or an outage under way as the process starts, as a supervisor restarts it) the
    way a running node waits out an outage: with a growing delay, up to
    `GIRDER_OUTAGE_TIMEOUT` (unset: until it answers). It says so in a warning at once, with
    the error (a wrong URL is then plain to see). A setting the backend refuses (a
    `ConfigurationError`: a cluster reached with redis://, an old server) fails at once.
    `Grid.connect` and the one-off commands (`girder status`) do not wait: they fail at once.
    False if `stop` was set (SIGTERM) before the backend answered."""
    backend, log = node.backend, node_logger(node.id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = _CONNECT_RETRY_FIRST
    while True:
        try:
            await backend.connect()
        except BackendError as exc:
            waited = loop.time() - started
            if settings.outage_timeout is not None and waited >= settings.outage_timeout:
                raise
            if delay == _CONNECT_RETRY_FIRST:
                log.warning("backend unreachable at start; waiting for it", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return False
            delay = min(_CONNECT_RETRY_MAX, delay * 2)
            continue
        if delay != _CONNECT_RETRY_FIRST:
            log.warning("backend reachable; starting", waited=round(loop.time() - started, 2))
        return True


def run_worker(settings: Settings, argv: Sequence[str] | None = None) -> None:
    """`girder worker`: one worker process in the pool `settings.pool`. On a shared backend it
    runs under a `WorkerSupervisor` (time limits of sync requests; `argv` is the command line
    that starts the node again), unless it is that supervisor's child already."""
    if argv is not None and not supervised():
        backend = open_backend(settings.backend, settings=settings)
        if backend.shared:
            configure(settings.log_level, settings.log_format)
            sys.exit(WorkerSupervisor(settings, list(argv)).run())
    configure(settings.log_level, settings.log_format)
    import_modules(settings.imports)
    backend = open_backend(settings.backend, settings=settings)
    worker = Worker(backend, settings, node_id=settings.name)
    node_logger(worker.id).info("worker ready", pool=settings.pool, imports=settings.imports)
    asyncio.run(serve(settings, [worker]))


def run_distributor(settings: Settings) -> None:
    """`girder distributor`: a distributor named `settings.name` (default: the pool name)."""
    configure(settings.log_level, settings.log_format)
    backend = open_backend(settings.backend, settings=settings)
    distributor = Distributor(
        backend, settings, node_id=settings.name or settings.pool, parent=settings.parent
    )
    asyncio.run(serve(settings, [distributor]))


COUNTERS = ("ran", "failed", "cache_hits", "shared", "lost")
"""The per-node counters `girder status` shows (each node publishes them with its heartbeat)."""


async def read_status(backend: StateBackend) -> dict[str, object]:
    """Nodes with liveness, work-list lengths, running counts and counters; the queues of pools
    that no live node serves; volunteers, cache size, and the figures of each server that
    holds the grid's state."""
    nodes: list[NodeInfo] = await backend.nodes()
    distributors = [n.node for n in nodes if n.kind.value == "distributor"]
    volunteers = {d: await backend.volunteers(d) for d in distributors}
    alive = {n.node for n in nodes if n.alive}
    lists = await backend.work_lists()
    return {
        "backend": backend.url,
        "nodes": [
            {
                "node": n.node,
                "kind": n.kind.value,
                "distributor": n.distributor,
                "alive": n.alive,
                "work": n.work,
                "running": n.running,
                **{name: n.counters.get(name, 0) for name in COUNTERS},
            }
            for n in nodes
        ],
        "unserved": {name: length for name, length in lists.items() if name not in alive},
        "volunteers": volunteers,
        "cache_size": await backend.cache_size(),
        **await _servers(backend),
    }


async def _servers(backend: StateBackend) -> dict[str, object]:
    """`servers` of the status, or why the servers would not tell (an ACL without `INFO` or
    `CLIENT`): the rest of the status does not need them."""
    try:
        return {"servers": [dataclasses.asdict(load) for load in await backend.servers()]}
    except BackendError as exc:
        return {"servers": [], "servers_refused": str(exc)}


async def grid_status(settings: Settings) -> dict[str, object]:
    """`read_status` of the grid of `settings`, once."""
    backend = open_backend(settings.backend, settings=settings)
    await backend.connect()
    try:
        return await read_status(backend)
    finally:
        await backend.close()


async def watch_status(
    settings: Settings, interval: float, show: Callable[[dict[str, object]], None]
) -> None:
    """`show` the grid's status every `interval` seconds, until cancelled (Ctrl-C)."""
    backend = open_backend(settings.backend, settings=settings)
    await backend.connect()
    try:
        while True:
            show(await read_status(backend))
            await asyncio.sleep(interval)
    finally:
        await backend.close()


def format_status(status: dict[str, object]) -> str:
    """`girder status` as a table."""
    lines = [f"backend {status['backend']}   cached results: {status['cache_size']}"]
    lines.append(
        f"{'node':<40}{'kind':<13}{'pool':<12}{'alive':<7}{'work':>7}{'running':>9}"
        f"{'ran':>9}{'failed':>8}{'hits':>8}{'shared':>8}{'lost':>6}"
    )
    nodes = status["nodes"]
    unserved = status["unserved"]
    volunteers = status["volunteers"]
    if not (
        isinstance(nodes, list) and isinstance(unserved, dict) and isinstance(volunteers, dict)
    ):
        raise TypeError("not a status from read_status")
    for n in nodes:
        lines.append(
            f"{n['node']:<40}{n['kind']:<13}{n['distributor'] or '-':<12}"
            f"{'yes' if n['alive'] else 'NO':<7}{n['work']:>7}{n['running']:>9}"
            f"{n['ran']:>9}{n['failed']:>8}{n['cache_hits']:>8}{n['shared']:>8}{n['lost']:>6}"
        )
    for pool, length in unserved.items():
        lines.append(f"queued in {pool!r}, which no live node serves: {length}")
    for distributor, waiting in volunteers.items():
        lines.append(f"volunteers at {distributor}: {', '.join(waiting) or '-'}")
    servers = status["servers"]
    if not isinstance(servers, list):
        raise TypeError("not a status from read_status")
    if servers:
        lines += ["", _server_table(servers)]
    if "servers_refused" in status:
        lines.append(f"the servers' figures could not be read: {status['servers_refused']}")
    return "\n".join(lines)


def _server_table(servers: list[dict[str, object]]) -> str:
    """The servers of `girder status`: where the grid's load goes (`StateBackend.servers`)."""
    lines = [
        f"{'server':<24}{'slots':>7}{'  grid slot':<12}{'memory MiB':>11}{'cpu s':>10}"
        f"{'commands':>12}{'ops/s':>8}{'keys':>10}"
    ]
    for s in servers:
        memory = _number(s["memory"]) / 2**20
        lines.append(
            f"{s['address']!s:<24}{s['slots']:>7}{'  yes' if s['grid_slot'] else '  -':<12}"
            f"{memory:>11.1f}{_number(s['cpu_seconds']):>10.1f}{s['commands']:>12}"
            f"{s['ops_per_second']:>8}{s['keys']:>10}"
        )
    return "\n".join(lines)


def _number(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"not a number in a status: {value!r}")
    return float(value)
