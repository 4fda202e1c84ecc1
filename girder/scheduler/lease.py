"""A thread that keeps this process's leases alive while its event loop is busy.

A sync grid function runs on the worker's event loop and may hold it for minutes; the in-loop
heartbeat would stall and other nodes would declare a live worker dead. For shared backends,
each process therefore also renews its nodes' leases from a thread with its own event loop and
its own backend connection. If the process dies, the thread dies with it and the leases lapse.
While the backend cannot be reached (even at first), the thread keeps trying.
"""

from __future__ import annotations

import asyncio
import threading

from girder.backends import open_backend
from girder.backends.base import StateBackend
from girder.config import Settings
from girder.log import node_logger


class LeaseKeeper:
    """Renews the leases of a set of node ids from a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nodes: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="girder-leases", daemon=True)

    def add(self, node: str) -> None:
        with self._lock:
            self._nodes.add(node)
        if not self._thread.is_alive():
            self._thread.start()

    def discard(self, node: str) -> None:
        with self._lock:
            self._nodes.discard(node)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.run(self._beat())

    async def _beat(self) -> None:
        """Renew the leases every interval. A failure, the first connect's included, is retried
        with a doubling delay (at most half a lease), so leases are kept again as soon as the
        backend is back."""
        interval = self._settings.heartbeat_interval
        backend = open_backend(self._settings.backend, settings=self._settings)
        log = node_logger("lease-keeper", backend=backend.url)
        connected = failing = False
        delay = interval
        try:
            while not self._stop.wait(delay):
                try:
                    if not connected:
                        await backend.connect()
                        connected = True
                    await self._renew(backend)
                except Exception as exc:
                    if not failing:
                        log.warning("cannot renew leases; retrying", error=repr(exc))
                    failing = True
                    delay = min(delay * 2, max(interval, self._settings.heartbeat_ttl / 2))
                    continue
                if failing:
                    log.info("renewing leases again")
                failing = False
                delay = interval
        finally:
            await backend.close()

    async def _renew(self, backend: StateBackend) -> None:
        with self._lock:
            nodes = list(self._nodes)
        for node in nodes:
            # A False answer (node forgotten) is handled by the node's own loop.
            await backend.heartbeat(node, self._settings.heartbeat_ttl)


_keepers: dict[str, LeaseKeeper] = {}
_keepers_lock = threading.Lock()


def lease_keeper(settings: Settings, *, shared: bool) -> LeaseKeeper | None:
    """The process-wide keeper for a `shared` backend's URL (None for in-process backends)."""
    if not shared:
        return None
    with _keepers_lock:
        keeper = _keepers.get(settings.backend)
        if keeper is None:
            keeper = _keepers[settings.backend] = LeaseKeeper(settings)
        return keeper
