"""The one settings model. The API, the CLI and `GIRDER_*` environment variables all read it.

Precedence: explicit arguments (API keywords, CLI options) over environment variables over the
defaults below. Every field is documented in docs/configuration.md.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from girder.errors import ConfigurationError
from girder.log import LogFormat, configure, get_logger


class Settings(BaseSettings):
    """How a grid node behaves. Read `GIRDER_<FIELD>` from the environment."""

    model_config = SettingsConfigDict(env_prefix="GIRDER_", extra="forbid")

    backend: str = Field("memory://", description="URL of the state backend.")
    pool: str = Field("pool", description="Name of the distributor that clients and workers use.")
    name: str | None = Field(None, description="This node's id (generated when unset).")
    parent: str | None = Field(None, description="A distributor's own distributor, if nested.")
    workers: int = Field(4, ge=1, description="Workers that `Grid.local` and `girder up` start.")
    concurrency: int = Field(1, ge=1, description="Batons per worker (user functions at once).")
    io_concurrency: int = Field(
        256,
        ge=0,
        description="Async requests per worker that may wait on I/O at once, their batons lent "
        "to the next requests (0: an `await` keeps its baton).",
    )
    sync_offload: Literal["thread", "process"] = Field(
        "thread",
        description="Where slow sync grid functions run, off the event loop: the worker's thread "
        '("thread": same interpreter, shares the GIL) or child processes ("process": the loop '
        "never waits for the GIL; functions, arguments and values are pickled).",
    )
    steal_period: float = Field(0.1, gt=0, description="Seconds between a distributor's trims.")
    heartbeat_interval: float = Field(1.0, gt=0, description="Seconds between heartbeats.")
    heartbeat_ttl: float = Field(5.0, gt=0, description="Seconds without a heartbeat => dead.")
    reap_interval: float = Field(2.0, gt=0, description="Seconds between dead-node checks.")
    max_crashes: int = Field(3, ge=1, description="Worker deaths before a request is failed.")
    idle_poll: float = Field(1.0, gt=0, description="Longest sleep of an idle loop, seconds.")
    secret: SecretStr | None = Field(None, description="HMAC key; when set, payloads are signed.")
    insecure: bool = Field(False, description="Run on a shared backend without a secret.")
    max_payload_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="Largest serialized value or arguments."
    )
    large_value_bytes: int = Field(
        1024 * 1024, gt=0, description="Values and arguments over this are stored as blobs."
    )
    spread_results: bool = Field(
        False,
        description="Redis: move each cached result out of the grid's hash slot into the slot "
        "of its own key, so that on a Redis Cluster cached results and cache hits spread over "
        "every primary (docs/scaling.md). The workers move what they complete; every process "
        "finds moved results.",
    )
    spread_notifications: bool = Field(
        False,
        description="Redis: keep each node's notifications in a hash slot of its own instead "
        "of the grid's, so that on a Redis Cluster the notifications, and the waits for them, "
        "spread over every primary (docs/scaling.md). Set per process: it says where that "
        "process's nodes are told; every process posts wherever a node says.",
    )
    layout: Literal["one-slot", "sharded"] = Field(
        "one-slot",
        description="Redis: where a grid keeps its live state. one-slot: all of it in the "
        "grid's hash slot (the faster on one server; one Redis core bounds it). sharded: each "
        "request's record in the slot of its own key, so that on a Redis Cluster the work "
        "spreads over every primary (docs/scaling.md); implies spread_notifications. Every "
        "process of a grid uses the same (a process refuses a grid kept in the other).",
    )
    key_prefix: str = Field("girder", description="Prefix of every key a shared backend writes.")
    log_level: str = Field("WARNING", description="structlog level: DEBUG, INFO, WARNING...")
    imports: list[str] = Field(default_factory=list, description="Modules a worker imports.")
    outage_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds an operation waits for an unreachable backend before it fails "
        "(unset: until the backend is back).",
    )
    allowed_modules: list[str] = Field(
        default_factory=list, description="More modules a worker may run functions from by name."
    )
    events: bool = Field(
        True,
        description="Publish grid events (for `girder dashboard` and `/metrics`) while someone "
        "reads them.",
    )
    events_watch: float = Field(
        30.0,
        gt=0,
        description="Seconds a read of the events keeps them published: a grid that nobody "
        "watches publishes none and pays nothing for them.",
    )
    events_max: int = Field(
        10_000,
        ge=10,
        description="Length of the event stream: events in memory, atomic steps on Redis "
        "(which may grow a tenth past it before the oldest go).",
    )
    auto_version: bool = Field(
        False,
        description='Version grid functions without a `version` by their code ("auto").',
    )
    cache_ttl: float | None = Field(
        30 * 24 * 3600.0,
        gt=0,
        description="Seconds a cached result lives unless its function sets `ttl` "
        "(unset: forever; on Redis such results are never evicted).",
    )
    cache_max_entries: int | None = Field(
        None, gt=0, description="Most results the memory backend caches (least recently used go)."
    )
    cache_max_bytes: int | None = Field(
        1024**3, gt=0, description="Most bytes of results the memory backend caches."
    )
    restart_limit: int = Field(5, ge=1, description="Deaths of a `girder up` child in the window.")
    restart_window: float = Field(60.0, gt=0, description="Seconds `restart_limit` counts in.")
    log_dir: str | None = Field(
        None, description="Folder of a node process's DIR/<node>.out and .err (unset: stderr)."
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="How girder's own processes print logs: key=value lines or JSON."
    )
    pool_wait: float = Field(
        5.0,
        gt=0,
        description="Seconds a request waits for a pool no distributor serves before it fails.",
    )

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, secret: SecretStr | None) -> SecretStr | None:
        """An empty secret is a mistake (say, `$(cat missing-file)`), never a key."""
        if secret is not None and not secret.get_secret_value():
            raise ValueError("the secret is empty (GIRDER_SECRET is set to nothing)")
        return secret

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the non-None `overrides` applied (validated)."""
        values = self.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Settings.model_validate(values)

    def secret_bytes(self) -> bytes | None:
        return None if self.secret is None else self.secret.get_secret_value().encode()


def load_settings(*, warn: bool = True, **overrides: Any) -> Settings:
    """Settings from the environment, with explicit `overrides` (None means "not given").

    Raises `ConfigurationError` naming every bad field. With `warn`, unknown `GIRDER_*`
    environment variables are warned about (see `warn_unknown_variables`).
    """
    if warn:
        warn_unknown_variables()
    try:
        return Settings().with_overrides(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigurationError(f"invalid girder settings: {problems}") from exc


_INTERNAL_VARIABLES = frozenset({"GIRDER_WATCHDOG_FD"})
"""`GIRDER_*` variables girder sets for its own child processes: no settings."""

_warned: set[str] = set()


def warn_unknown_variables() -> None:
    """Log a warning, once per process and variable, for each `GIRDER_*` environment variable
    that names no setting (a typo would otherwise be ignored in silence)."""
    known = {f"GIRDER_{name.upper()}" for name in Settings.model_fields}
    for variable in os.environ:
        name = variable.upper()
        if not name.startswith("GIRDER_") or name in known or name in _INTERNAL_VARIABLES:
            continue
        if variable in _warned:
            continue
        _warned.add(variable)
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        get_logger().warning(
            f"unknown environment variable {variable} (no girder setting has that name){hint}",
            variable=variable,
            closest=close[0] if close else None,
        )


def configure_logging(level: str | None = None, fmt: LogFormat | None = None) -> None:
    """Ask girder to print its own log lines (to stderr), for an application or a notebook that
    has no logging set-up of its own; nothing else's logging changes (see `girder.log`).
    `level` and `fmt` default to the settings (`GIRDER_LOG_LEVEL`, `GIRDER_LOG_FORMAT`)."""
    settings = load_settings()
    configure(level or settings.log_level, fmt or settings.log_format)
