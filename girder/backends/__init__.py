"""Backends: the `StateBackend` protocol and its implementations, chosen by URL scheme.

`open_backend("memory://")` builds a `MemoryBackend`; `redis://`, `rediss://`, `unix://`,
`redis+cluster://`, `redis+sentinel://` and their TLS forms `rediss+cluster://` and
`rediss+sentinel://` build a `RedisBackend` (the `girder[redis]` extra), or with
`Settings.layout = "sharded"` a `ShardedRedisBackend`.
Third-party backends register a factory under the entry-point group `girder.backends`, named by
their URL scheme, or call `register_backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from girder.backends.base import StateBackend
from girder.errors import ConfigurationError

BackendFactory = Callable[..., StateBackend]

known_backends: dict[str, str] = {
    "memory": "girder.backends.memory:MemoryBackend",
    "redis": "girder.backends.redis:open_redis",
    "rediss": "girder.backends.redis:open_redis",
    "unix": "girder.backends.redis:open_redis",
    "redis+cluster": "girder.backends.redis:open_redis",
    "redis+sentinel": "girder.backends.redis:open_redis",
    "rediss+cluster": "girder.backends.redis:open_redis",
    "rediss+sentinel": "girder.backends.redis:open_redis",
}
"""URL scheme -> "module:factory" of the backends that ship with girder."""

_install_hints = {
    "redis": "pip install 'girder-grid[redis]' (in a checkout: pip install -e '.[redis]')"
}
_registered: dict[str, BackendFactory] = {}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Make `open_backend` build URLs of `scheme` with `factory(url, **options)`."""
    _registered[scheme] = factory


def _load(target: str, scheme: str) -> BackendFactory:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = _install_hints.get(module_name.rsplit(".", 1)[-1])
        extra = f"; install it with: {hint}" if hint else ""
        raise ConfigurationError(f"backend '{scheme}://' needs {exc.name!r}{extra}") from exc
    factory: BackendFactory = getattr(module, attr)
    return factory


def _find_factory(scheme: str) -> BackendFactory:
    if scheme in _registered:
        return _registered[scheme]
    if scheme in known_backends:
        return _load(known_backends[scheme], scheme)
    for entry in entry_points(group="girder.backends"):
        if entry.name == scheme:
            factory: BackendFactory = entry.load()
            return factory
    known = sorted({*known_backends, *_registered})
    raise ConfigurationError(f"unknown backend scheme '{scheme}://'; known: {', '.join(known)}")


def open_backend(url: str, **options: Any) -> StateBackend:
    """Build (but do not connect) the backend that `url` names."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"backend URL {url!r} has no scheme (expected e.g. memory://)")
    return _find_factory(scheme)(url, **options)


__all__ = ["StateBackend", "known_backends", "open_backend", "register_backend"]
