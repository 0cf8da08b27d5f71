"""The dashboard's web app (aiohttp): the page, its static files, a JSON snapshot and the
Server-Sent Events stream of updates.

    GET /             the page (static/index.html)
    GET /static/NAME  app.js, style.css (shipped in the package: works offline, no CDN)
    GET /api/state    the hub's snapshot (JSON), for scripts and tests
    GET /api/stream   text/event-stream: ``snapshot`` first, then ``emotion``, ``trend``,
                      ``alert`` and ``status`` events (docs/DASHBOARD.md)

It listens on ``dashboard.host`` (127.0.0.1 unless set): the page shows transcripts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web

from emomon.services.dashboard.hub import DashboardHub
from emomon.services.publish.base import SinkError

log = logging.getLogger(__name__)

_STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}


class DashboardError(SinkError):
    """The dashboard cannot serve (its port is taken, the address is not local)."""


def _asset(name: str) -> bytes:
    return resources.files("emomon.services.dashboard").joinpath("static", name).read_bytes()


def build_app(hub: DashboardHub) -> web.Application:
    assets = {name: _asset(name) for name in _STATIC}  # read once: the package may be a zip

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=assets["index.html"], content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC or name == "index.html":
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], content_type=_STATIC[name], charset="utf-8")

    async def state(_: web.Request) -> web.Response:
        return web.json_response(hub.snapshot())

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            async for frame in hub.frames():
                await resp.write(frame)
        return resp

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/stream", stream)
    return app


@contextlib.asynccontextmanager
async def serve(hub: DashboardHub, host: str, port: int) -> AsyncIterator[str]:
    """Serve the dashboard while the block runs; yield its URL.

    Raises:
        DashboardError: the address cannot be bound (port taken, unknown host).
    """
    runner = web.AppRunner(build_app(hub), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise DashboardError(
                f"cannot serve the dashboard on {host}:{port}: {e.strerror or e} "
                "(--dashboard-port PORT, or 0 for a free one)"
            ) from e
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        yield f"http://{shown}:{bound[1]}/"
    finally:
        hub.close_pages()
        await runner.cleanup()
