"""The dashboard's web server (aiohttp): the page, its live feed, and `/metrics`.

A `Dashboard` follows one backend: every `period` seconds it reads the new grid events
(`StateBackend.events`) and folds them into a `GridModel`; every `sample_period` it samples the
nodes and their work lists, and the figures of the servers that hold the grid. The page gets the
model pushed as server-sent events (`/live`), at most `period` + `push_period` behind the backend.

Routes: `/` the page, `/static/...` its files (all packaged: the page works offline), `/live`
server-sent events (`?job=ID` adds that job's call graph), `/api/state`, `/api/graph?job=ID`, and
`/metrics` (Prometheus text).

Bound to loopback by default. On any other address every route needs the dashboard's token (a
`?token=` query parameter, an `Authorization: Bearer` header, or the cookie the page gets when it is
opened with the token): a grid's request names, errors and topology are not for its whole network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import secrets
import signal
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from girder.backends import open_backend
from girder.backends.base import StateBackend
from girder.config import Settings
from girder.dashboard.metrics import CONTENT_TYPE, render
from girder.dashboard.model import GridModel
from girder.errors import BackendError, ConfigurationError
from girder.log import get_logger

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ConfigurationError(
        "the dashboard needs aiohttp; install it with: pip install 'girder-grid[dashboard]'"
    ) from exc

_log = get_logger()

DEFAULT_PORT = 8787
COOKIE = "girder_dashboard_token"
READ_LIMIT = 5000
"""Events read per backend call (the follower reads on while a call comes back full)."""
SERVERS_WAIT_S = 1.0
"""How long a sample of the servers' figures may wait for a server that is away."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """A dashboard of the grid whose state `backend` holds (connected by the caller)."""

    def __init__(
        self,
        backend: StateBackend,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        period: float = 0.25,
        sample_period: float = 1.0,
        push_period: float = 0.5,
    ) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.token = token if token is not None or is_loopback(host) else secrets.token_urlsafe(24)
        self.model = GridModel()
        self.period, self.sample_period, self.push_period = period, sample_period, push_period
        self._runner: web.AppRunner | None = None
        self._follower: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._servers_refused = False
        self._static = Path(str(resources.files("girder.dashboard").joinpath("static")))

    @property
    def url(self) -> str:
        """The page's URL (with the token, when one is needed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    async def start(self) -> str:
        """Start following the backend and serving; returns the URL (the real port when
        `port` was 0)."""
        app = web.Application(middlewares=[self._authorize])
        app.router.add_get("/", self._index)
        app.router.add_get("/live", self._live)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/graph", self._graph)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_static("/static", self._static)
        self._closing.clear()
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        await self.refresh()
        self._follower = asyncio.create_task(self._follow(), name="girder-dashboard")
        return self.url

    async def stop(self) -> None:
        """Stop serving and following (the backend stays open)."""
        self._closing.set()  # ends the live feeds, so that no connection holds the shutdown
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- following the grid -----------------------------------------------------------------------

    async def refresh(self, *, sample: bool = True) -> None:
        """Fold every new event into the model; with `sample`, sample the nodes too."""
        while True:
            events = await self.backend.events(self.model.last_event or None, READ_LIMIT)
            self.model.fold(events)
            if len(events) < READ_LIMIT:
                break
        if sample:
            self.model.sample(await self.backend.nodes())
            await self._sample_servers()

    async def _sample_servers(self) -> None:
        """The servers' figures; a server that refuses them (an ACL without INFO or CLIENT)
        costs only its table, said once in the log, and one that is away (a primary failing
        over) keeps the last figures: the events go on meanwhile."""
        try:
            async with asyncio.timeout(SERVERS_WAIT_S):
                self.model.sample_servers(await self.backend.servers())
        except TimeoutError:
            pass
        except BackendError as exc:
            if not self._servers_refused:
                _log.warning("dashboard cannot read the servers' figures", error=str(exc))
            self._servers_refused = True

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        next_sample = loop.time() + self.sample_period
        delay = self.period
        while True:
            await asyncio.sleep(delay)
            try:
                due = loop.time() >= next_sample
                await self.refresh(sample=due)
                if due:
                    next_sample = loop.time() + self.sample_period
                delay = self.period
            except Exception as exc:  # the grid's backend may be away for a while
                _log.warning("dashboard cannot read the grid", error=repr(exc))
                delay = min(max(delay * 2, self.period), 5.0)

    # -- web --------------------------------------------------------------------------------------

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.token:
            return await handler(request)
        given = (
            request.query.get("token")
            or _bearer(request.headers.get("Authorization", ""))
            or request.cookies.get(COOKIE)
        )
        if not given:
            raise web.HTTPUnauthorized(
                text="this dashboard needs its token: open the URL it printed at start\n"
            )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise web.HTTPForbidden(text="wrong dashboard token\n")
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self._static / "index.html")

    async def _state(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.model.snapshot())

    async def _graph(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.model.graph(request.query.get("job", "")))

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(text=render(self.model))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def _live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the model's snapshot (and the chosen job's graph) twice a
        second, until the page goes away."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        job = request.query.get("job", "")
        with contextlib.suppress(ConnectionResetError):
            while not self._closing.is_set():
                data: dict[str, Any] = self.model.snapshot()
                if job:
                    data["graph"] = self.model.graph(job)
                await response.write(f"data: {json.dumps(data)}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.push_period)
        return response


def _bearer(header: str) -> str:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def serve_dashboard(settings: Settings, *, host: str, port: int) -> None:
    """`girder dashboard`: serve the dashboard of the grid at `settings.backend` until SIGTERM
    or SIGINT. Prints the URL (with the token, off loopback) on stdout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    backend = open_backend(settings.backend, settings=settings)
    await backend.connect()
    dashboard = Dashboard(backend, host=host, port=port)
    try:
        url = await dashboard.start()
        print(f"girder dashboard of {backend.url}: {url}", flush=True)
        await stop.wait()
    finally:
        await dashboard.stop()
        await backend.close()
