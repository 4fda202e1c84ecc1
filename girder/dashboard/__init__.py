"""The live dashboard of a grid (`girder dashboard`, `Grid.local(dashboard=True)`) and its
Prometheus `/metrics`. Needs the `dashboard` extra (aiohttp)."""

from __future__ import annotations

from girder.dashboard.model import GridModel
from girder.dashboard.server import DEFAULT_PORT, Dashboard, is_loopback

__all__ = ["DEFAULT_PORT", "Dashboard", "GridModel", "is_loopback"]
