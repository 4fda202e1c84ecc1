"""girder logs like a library: the host's logging and structlog set-up stay the host's; girder's
own processes print `key=value` lines or JSON; requests get DEBUG lines; typos in `GIRDER_*`
variables are warned about."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from gridfns import add

import girder
from girder import config
from girder.config import load_settings


@pytest.fixture
def host_structlog() -> Iterator[io.StringIO]:
    """The host application's structlog set-up: JSON lines into a buffer (reset afterwards)."""
    output = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )
    try:
        yield output
    finally:
        structlog.reset_defaults()


@pytest.fixture
def girder_logger() -> Iterator[logging.Logger]:
    """The `girder` stdlib logger, with its handlers, level and propagation restored after."""
    logger = logging.getLogger("girder")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield logger
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


async def test_a_grid_leaves_the_hosts_structlog_and_logging_alone(
    host_structlog: io.StringIO,
) -> None:
    root = logging.getLogger()
    host_handler = logging.StreamHandler(io.StringIO())
    root.addHandler(host_handler)
    try:
        config_before = structlog.get_config()
        handlers_before, level_before = list(root.handlers), root.level
        async with girder.Grid.local(workers=2, log_level="DEBUG") as grid:
            assert await grid.call(add, 1, 2) == 3
            structlog.get_logger().info("inside the grid", user=1)
        structlog.get_logger().info("after the grid", user=2)
        assert structlog.get_config() == config_before
        assert root.handlers == handlers_before
        assert root.level == level_before
    finally:
        root.removeHandler(host_handler)
    lines = [json.loads(line) for line in host_structlog.getvalue().splitlines()]
    assert {"event": "inside the grid", "user": 1, "level": "info"} in lines
    assert {"event": "after the grid", "user": 2, "level": "info"} in lines


async def test_requests_get_debug_lines_with_readable_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="girder"):
        async with girder.Grid.local(workers=1) as grid:
            assert await grid.call(add, 20, 22) == 42
    events = [getattr(record, "girder_event", {}) for record in caplog.records]
    started = [e for e in events if e.get("event") == "request started"]
    assert len(started) == 1
    (line,) = started
    assert line["request"] == "add(20, 22)"
    assert line["node"] == "pool-w1"
    assert line["key"] == girder.Request(add, 20, 22).key
    assert line["job"].startswith(grid.client.id)
    finished = [e for e in events if e.get("event") == "request finished"]
    assert [(e["request"], e["failed"]) for e in finished] == [("add(20, 22)", False)]


async def test_debug_lines_cost_nothing_when_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="girder"):
        async with girder.Grid.local(workers=1) as grid:
            assert await grid.call(add, 1, 1) == 2
    assert not [r for r in caplog.records if r.levelno < logging.INFO]


def test_configure_logging_prints_girders_lines_only(
    girder_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    root_handlers = list(logging.getLogger().handlers)
    girder.configure_logging("INFO", "json")
    girder_logger.info("from girder")
    logging.getLogger("host").warning("from the host")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["event"] == "from girder"
    assert logging.getLogger().handlers == root_handlers


def test_an_unknown_girder_variable_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GIRDER_HEARTBEAT_TLL", "3")
    monkeypatch.setattr(config, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="girder"):
        load_settings()
        load_settings()
    warned = [r.message for r in caplog.records if "GIRDER_HEARTBEAT_TLL" in r.message]
    assert len(warned) == 1
    assert "GIRDER_HEARTBEAT_TTL" in warned[0]


def _girder(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GIRDER_")}
    return subprocess.run(
        [sys.executable, "-m", "girder", *args],
        env={**environment, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _demo(**env: str) -> list[str]:
    done = _girder("demo", "--jobs", "1", "--level", "1", "--workers", "1", **env)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_girders_processes_print_json_when_asked() -> None:
    lines = _demo(GIRDER_LOG_FORMAT="json", GIRDER_LOG_LEVEL="INFO", GIRDER_WROKERS="2")
    events: list[dict[str, Any]] = [json.loads(line) for line in lines]
    typo = [e for e in events if e.get("variable") == "GIRDER_WROKERS"]
    assert typo
    assert typo[0]["closest"] == "GIRDER_WORKERS"
    assert typo[0]["level"] == "warning"
    assert any(e["event"] == "node started" and e["node"] == "pool-w1" for e in events)


def test_girders_processes_print_key_value_lines_by_default() -> None:
    lines = _demo(GIRDER_LOG_LEVEL="INFO")
    started = [line for line in lines if "event='node started'" in line]
    assert started
    assert all(line.startswith("timestamp=") for line in started)
    assert any("node='pool-w1'" in line for line in started)
