"""The dashboard in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which `.ci/run` installs) driven by Selenium loads the page while a tree of
requests runs over Redis on two worker processes, and sees the nodes, their counts, the Redis
server and the job's call graph appear and grow.

Screenshots go to the test's folder, and to $GIRDER_SCREENSHOTS when set (how the pictures in
docs/img/ were made: `GIRDER_SCREENSHOTS=docs/img pytest tests/test_dashboard_browser.py`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gridfns import fan_of_fans, staged
from processes import grid_on

from girder.backends.redis import RedisBackend
from girder.config import Settings
from girder.dashboard import Dashboard

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver; .ci/run installs them)",
    ),
]

LEVELS = 6
"""staged(6, ...): a binary tree of 2**7 - 1 = 127 requests."""


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver  # noqa: PLC0415 -- only when chromium is there
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1700")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(DRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


async def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll a blocking browser `check` (in a thread) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.2)


def server_rows(driver: Any) -> list[list[str]]:
    """The Redis servers table, if shown: each row's cells."""
    script = """
      if (document.getElementById('servers-panel').hidden) return [];
      return [...document.querySelectorAll('#servers tbody tr')].map(
        (row) => [...row.querySelectorAll('td')].map((cell) => cell.textContent));"""
    found: list[list[str]] = driver.execute_script(script)
    return found


def node_counts(driver: Any) -> dict[str, dict[str, str]]:
    """The nodes table: node -> {field: shown value}."""
    script = """
      const rows = {};
      for (const row of document.querySelectorAll('#nodes tbody tr')) {
        const cells = {};
        for (const cell of row.querySelectorAll('td[data-field]')) {
          cells[cell.dataset.field] = cell.textContent;
        }
        rows[row.dataset.node] = cells;
      }
      return rows;"""
    found: dict[str, dict[str, str]] = driver.execute_script(script)
    return found


def graph_size(driver: Any) -> tuple[int, int]:
    """Requests and edges the page's call graph shows, read from cytoscape itself."""
    script = """
      const cy = window.girderGraph;
      return cy ? [cy.nodes().length, cy.edges().length] : [0, 0];"""
    nodes, edges = driver.execute_script(script)
    return int(nodes), int(edges)


def screenshot(driver: Any, folder: Path, name: str) -> None:
    driver.save_screenshot(str(folder / name))
    published = os.environ.get("GIRDER_SCREENSHOTS")
    if published:
        shutil.copy(folder / name, Path(published) / name)


async def test_the_page_shows_nodes_counts_and_a_growing_graph(
    browser: Any, redis_url: str, tmp_path: Path
) -> None:
    backend = RedisBackend(redis_url, settings=Settings())
    await backend.connect()
    dashboard = Dashboard(backend, port=0)
    try:
        # One request at a time per worker (no baton lent to naps): the tree takes seconds to
        # unfold, long enough for the page to watch it grow, and spreads over both workers.
        logs = tmp_path / "logs"
        async with grid_on(redis_url, logs, workers=2, io_concurrency=0) as (grid, _):
            url = await dashboard.start()
            await asyncio.to_thread(browser.get, url)
            rows = await until(
                lambda: {"w1", "w2"} <= set(node_counts(browser)) and node_counts(browser),
                "both workers in the nodes table",
            )
            assert rows["w1"]["kind"] == "worker"
            assert rows["w1"]["pool"] == "pool"
            assert rows["w2"]["alive"] == "yes"
            # The one server, with every slot; its share of a core once sampled twice.
            [server] = await until(
                lambda: [r for r in server_rows(browser) if r[3] != "…"], "the server's CPU"
            )
            assert server[:3] == [redis_url.split("/")[2], "16384", "yes"]
            assert float(server[3]) >= 0

            handle = grid.submit(staged, LEVELS, 100, "browser")
            first = await until(lambda: graph_size(browser)[0] > 0, "the job's graph")
            assert first
            early = await asyncio.to_thread(graph_size, browser)
            grown = await until(
                lambda: graph_size(browser)[0] > early[0] + 10 and graph_size(browser),
                "the graph growing while the job runs",
            )
            assert grown[1] > 0
            assert not handle.done(), "the job ended before the page saw it grow"
            await until(lambda: graph_size(browser)[0] >= 60, "half the tree")
            await asyncio.sleep(0.6)  # the layout settles (it runs at most twice a second)
            screenshot(browser, tmp_path, "dashboard-running.png")

            assert await handle == 2**LEVELS
            total = 2 ** (LEVELS + 1) - 1
            assert await until(
                lambda: graph_size(browser) == (total, total - 1), "the whole tree", timeout=30
            )

            def ran() -> int:
                rows = node_counts(browser)
                return sum(int(rows[w]["ran"]) for w in ("w1", "w2"))

            assert await until(lambda: ran() >= total, "every request counted as ran")
            assert ran() == total
            shown = await asyncio.to_thread(node_counts, browser)
            assert int(shown["w1"]["ran"]) > 0, "one worker ran everything: nothing was shared"
            assert int(shown["w2"]["ran"]) > 0, "one worker ran everything: nothing was shared"

            # A larger job is shown collapsed by function (the page follows the newest job):
            # 1 + 160 fans + 2 naps (which every fan shares).
            wide = grid.submit(fan_of_fans, 160, 2, 1, "wide")
            assert await wide == 160
            await until(
                lambda: (
                    browser.find_element("id", "graph").get_attribute("data-collapsed") == "true"
                ),
                "the wide job's graph collapsed by function",
            )
            await asyncio.sleep(0.6)
            screenshot(browser, tmp_path, "dashboard-collapsed.png")
            assert await asyncio.to_thread(graph_size, browser) == (3, 2)
    finally:
        await dashboard.stop()
        await backend.close()
