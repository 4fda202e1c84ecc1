"""A thread that keeps this process's leases alive while its event loop is busy.

A sync grid function runs on the worker's event loop and may hold it for minutes; the in-loop
heartbeat would stall and other nodes would declare a live worker dead. For shared backends,
each process therefore also renews its nodes' leases from a thread with its own event loop and
its own backend connection. If the process dies, the thread dies with it and the leases lapse.
"""

from __future__ import annotations

import asyncio
import threading

from girder.backends import open_backend
from girder.config import Settings


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
        backend = open_backend(self._settings.backend, settings=self._settings)
        await backend.connect()
        try:
            while not self._stop.wait(self._settings.heartbeat_interval):
                with self._lock:
                    nodes = list(self._nodes)
                for node in nodes:
                    try:
                        # A False answer (node forgotten) is handled by the node's own loop.
                        await backend.heartbeat(node, self._settings.heartbeat_ttl)
                    except Exception:  # the backend may be restarting; try next round
                        break
        finally:
            await backend.close()


_keepers: dict[str, LeaseKeeper] = {}
_keepers_lock = threading.Lock()


def lease_keeper(settings: Settings) -> LeaseKeeper | None:
    """The process-wide keeper for a shared backend URL (None for in-process backends)."""
    if settings.backend.startswith("memory://"):
        return None
    with _keepers_lock:
        keeper = _keepers.get(settings.backend)
        if keeper is None:
            keeper = _keepers[settings.backend] = LeaseKeeper(settings)
        return keeper
