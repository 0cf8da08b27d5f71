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
import ipaddress
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _asset(name: str) -> bytes:
    return resources.files("emomon.services.dashboard").joinpath("static", name).read_bytes()


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")
_HEADERS = {  # defence in depth: the page shows untrusted transcripts
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _host_name(header: str) -> str:
    """``Host`` without its port (``[::1]:8765`` -> ``[::1]``, ``localhost:8765`` -> ``localhost``)."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def build_app(hub: DashboardHub, loopback_only: bool = True) -> web.Application:
    """``loopback_only``: answer only requests addressed to a loopback name, so a web page
    elsewhere cannot read the transcripts through DNS rebinding (its name resolving to
    127.0.0.1 makes the browser send that name as ``Host``)."""
    assets = {name: _asset(name) for name in _STATIC}  # read once: the package may be a zip

    @web.middleware
    async def guard(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if loopback_only and _host_name(request.host.lower()) not in _LOOPBACK_NAMES:
            return web.Response(status=421, text="this dashboard answers only to 127.0.0.1\n")
        return await handler(request)

    async def headers(_: web.Request, resp: web.StreamResponse) -> None:
        resp.headers.update(_HEADERS)

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

    app = web.Application(middlewares=[guard])
    app.on_response_prepare.append(headers)
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
    runner = web.AppRunner(
        build_app(hub, loopback_only=is_loopback(host)), access_log=None, shutdown_timeout=1.0
    )
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
        if not is_loopback(host):
            log.warning(
                "the dashboard listens on %s: anyone who can reach port %d sees the live "
                "transcripts and emotions, without a password (dashboard.host 127.0.0.1 keeps "
                "it on this machine; docs/SECURITY.md)",
                host,
                bound[1],
            )
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        yield f"http://{shown}:{bound[1]}/"
    finally:
        hub.close_pages()
        await runner.cleanup()
