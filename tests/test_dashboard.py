"""The dashboard's server: its token off loopback, /metrics, the live feed, the model's graph,
and `girder dashboard` as a process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from gridfns import divide, fib, ratio
from prometheus_client.parser import text_string_to_metric_families

import girder
from girder.backends.base import Event, EventKind
from girder.backends.memory import MemoryBackend
from girder.dashboard import Dashboard, GridModel, is_loopback


@pytest.fixture
async def open_dashboard() -> AsyncIterator[Dashboard]:
    """A dashboard on all addresses (so it needs its token), over an empty memory grid."""
    backend = MemoryBackend()
    await backend.connect()
    dashboard = Dashboard(backend, host="0.0.0.0", port=0)
    await dashboard.start()
    yield dashboard
    await dashboard.stop()


def local_url(dashboard: Dashboard, path: str) -> str:
    return f"http://127.0.0.1:{dashboard.port}{path}"


async def status_of(url: str, **options: object) -> int:
    async with aiohttp.ClientSession() as session, session.get(url, **options) as response:  # type: ignore[arg-type]
        return response.status


async def test_off_loopback_every_route_needs_the_token(open_dashboard: Dashboard) -> None:
    token = open_dashboard.token
    assert token
    assert len(token) >= 20
    assert token in open_dashboard.url
    for path in ("/", "/metrics", "/api/state", "/static/app.js", "/live"):
        assert await status_of(local_url(open_dashboard, path)) == 401, path
        assert await status_of(local_url(open_dashboard, path + "?token=wrong")) == 403, path
    assert await status_of(local_url(open_dashboard, f"/metrics?token={token}")) == 200
    bearer = {"Authorization": f"Bearer {token}"}
    assert await status_of(local_url(open_dashboard, "/api/state"), headers=bearer) == 200
    # Opened with the token, the page sets a cookie its own requests then carry.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(local_url(open_dashboard, f"/?token={token}")) as page:
            assert page.status == 200
            assert "girder" in await page.text()
        async with session.get(local_url(open_dashboard, "/static/app.js")) as script:
            assert script.status == 200


async def test_on_loopback_no_token_is_needed() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "::1", "localhost", "127.8.9.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.1.2.3", "example.org"]))
    async with girder.Grid.local(workers=1, dashboard=0) as grid:
        assert grid.dashboard.token is None
        assert await status_of(grid.dashboard.url + "api/state") == 200
        assert await status_of(grid.dashboard.url + "static/vendor/cytoscape.min.js") == 200


async def test_metrics_parse_and_count_what_ran() -> None:
    async with girder.Grid.local(workers=2, dashboard=0) as grid:
        assert await grid.call(fib, 10) == 55
        assert await grid.call(fib, 10) == 55  # a cache hit
        with pytest.raises(girder.RequestError):
            await grid.call(ratio, 1)
        await grid.dashboard.refresh()
        async with (
            aiohttp.ClientSession() as session,
            session.get(grid.dashboard.url + "metrics") as response,
        ):
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    requests = {
        (s.labels["function"], s.labels["outcome"]): s.value
        for s in families["girder_requests"].samples
    }
    assert requests["fib", "finished"] == 11  # fib(0) .. fib(10), each once
    assert requests["fib", "cached"] >= 1
    assert requests["divide", "failed"] == 1
    assert requests["ratio", "failed"] == 1
    histogram = families["girder_request_duration_seconds"]
    assert histogram.type == "histogram"
    counts = {s.labels["function"]: s.value for s in histogram.samples if s.name.endswith("_count")}
    assert counts["fib"] == 11
    nodes = {
        (s.labels["kind"], s.labels["alive"]): s.value for s in families["girder_nodes"].samples
    }
    assert nodes["worker", "true"] == 2
    assert nodes["distributor", "true"] == 1
    depths = families["girder_queue_depth"].samples
    assert {s.labels["node"] for s in depths} >= {"pool-w1", "pool-w2", "pool"}


async def test_the_live_feed_pushes_the_grid_and_the_chosen_graph() -> None:
    async with girder.Grid.local(workers=2, dashboard=0) as grid:
        assert await grid.call(fib, 6) == 8
        with pytest.raises(girder.RequestError):
            await grid.call(divide, 1, 0)
        await grid.dashboard.refresh()
        job = grid.dashboard.model.snapshot()["jobs"][-1]["job"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(grid.dashboard.url + f"live?job={job}") as response,
        ):
            assert response.headers["Content-Type"] == "text/event-stream"
            line = await asyncio.wait_for(response.content.readline(), 10)
    assert line.startswith(b"data: ")
    data = json.loads(line[len(b"data: ") :])
    workers = {n["node"]: n for n in data["nodes"] if n["kind"] == "worker"}
    assert set(workers) == {"pool-w1", "pool-w2"}
    assert sum(n["ran"] for n in workers.values()) == 7 + 1  # fib(0..6) and divide(1, 0)
    assert [f["name"] for f in data["failures"]] == ["divide"]
    assert "ZeroDivisionError" in data["failures"][0]["chain"]
    assert len(data["graph"]["nodes"]) == 7
    assert len(data["graph"]["edges"]) == 10  # fib(n) waits on fib(n-1) and fib(n-2), 2 <= n <= 6


def event(kind: EventKind, node: str, key: str = "", **fields: str) -> Event:
    return Event("", 1.0, kind, node, key, **fields)


def test_a_large_graph_collapses_by_function() -> None:
    model = GridModel()
    model.fold([event(EventKind.SUBMITTED, "c", "root", name="top", job="j", detail="new")])
    for index in range(30):
        model.fold(
            [
                event(EventKind.SUBMITTED, "w", f"k{index}", name="leaf", parent="root"),
                event(EventKind.CLAIMED, "w", f"k{index}"),
                event(EventKind.FINISHED, "w", f"k{index}"),
            ]
        )
    assert len(model.graph("j")["nodes"]) == 31
    collapsed = model.graph("j", limit=10)
    assert collapsed["collapsed"] is True
    assert {(n["name"], n["count"]) for n in collapsed["nodes"]} == {("top", 1), ("leaf", 30)}
    assert collapsed["edges"] == [{"source": "top", "target": "leaf", "count": 30}]


def test_node_counters_fold_from_events() -> None:
    model = GridModel()
    model.fold(
        [
            event(EventKind.JOINED, "w1", parent="pool", detail="worker"),
            event(EventKind.SUBMITTED, "w1", "a", name="f", detail="new"),
            event(EventKind.SUBMITTED, "w1", "b", name="f", detail="cached"),
            event(EventKind.SUBMITTED, "w1", "c", name="f", detail="shared"),
            event(EventKind.CLAIMED, "w1", "a"),
            event(EventKind.FAILED, "w1", "a", detail="f(1): boom"),
            event(EventKind.STOLEN, "pool", parent="w1", detail="3"),
            event(EventKind.LEFT, "w1", detail="reaped"),
        ]
    )
    w1 = model.nodes["w1"]
    assert (w1.kind, w1.pool, w1.alive) == ("worker", "pool", False)
    assert (w1.failed, w1.cache_hits, w1.shared, w1.stolen) == (1, 1, 1, 3)


@pytest.mark.redis
async def test_girder_dashboard_prints_a_url_with_its_token(redis_url: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "girder", "dashboard", "--backend", redis_url]
    proc = subprocess.Popen(  # noqa: ASYNC220 -- read from a thread below
        [*command, "--host", "0.0.0.0", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)).decode()
        assert "?token=" in line, line
        url = line.split(": ", 1)[1].strip()
        port = url.split(":")[2].split("/")[0]
        token = url.split("?token=")[1]
        assert await status_of(f"http://127.0.0.1:{port}/metrics") == 401
        assert await status_of(f"http://127.0.0.1:{port}/metrics?token={token}") == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
