"""A real headless Chromium driven through the DevTools protocol (issue 17's dashboard tests).

Debian's ``chromium`` package (scripts/install.sh --dev installs it); tests that need it skip
with the reason when it is missing. The protocol is spoken over the browser's WebSocket with
aiohttp's client, one command at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
REPO = Path(__file__).resolve().parents[2]


def require_chromium() -> str:
    if CHROMIUM is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium, or scripts/install.sh --dev)"
        )
    return CHROMIUM


def artifact_dir() -> Path:
    """Where tests keep what a person should look at (TEST_ARTIFACTS_DIR, default
    test-artifacts/ in the repository, which git ignores)."""
    import os

    d = Path(os.environ.get("TEST_ARTIFACTS_DIR", REPO / "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


class Browser:
    """``async with Browser() as b: await b.goto(url); await b.eval('1+1')``."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        self.size = (width, height)
        self._ids = itertools.count(1)
        # Chromium's helper processes may still write into the profile as it is removed
        self._profile = tempfile.TemporaryDirectory(
            prefix="emomon-chromium-", ignore_cleanup_errors=True
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Browser:
        profile = Path(self._profile.name)
        self._proc = subprocess.Popen(
            [
                require_chromium(),
                "--headless",
                "--no-sandbox",  # tests run as root in CI
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={self.size[0]},{self.size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: closed with all its helpers
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self._proc.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._http = aiohttp.ClientSession()
        for _ in range(100):
            async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self._ws = await self._http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)  # helpers that outlived it
            self._proc.wait()
        self._profile.cleanup()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        mid = next(self._ids)
        await self._ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = await asyncio.wait_for(self._ws.receive(), 30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection closed: {msg}")
            data = json.loads(msg.data)
            if data.get("id") == mid:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]

    async def goto(self, url: str, timeout_s: float = 30) -> None:
        """Navigate and wait until the page's document has loaded."""
        await self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        ready = "document.readyState === 'complete' && location.href === " + json.dumps(url)
        while not await self.eval(ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load within {timeout_s} s")
            await asyncio.sleep(0.1)

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        r = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(r["data"]))
        return path


#: what the tests read off the dashboard page (services/dashboard/static/app.js)
PAGE_STATE = """JSON.stringify({
  lanes: [...document.querySelectorAll('.lane')].map(e => e.dataset.speaker),
  events: document.querySelectorAll('.seg').length,
  texts: document.querySelectorAll('.transcript p').length,
  sparks: document.querySelectorAll('svg.spark polyline').length,
  trends: document.querySelectorAll('.trend .share').length,
  live: document.body.dataset.live,
  connected: document.body.dataset.connected,
  banner: document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent,
})"""


async def page_state(browser: Browser) -> dict[str, Any]:
    return json.loads(await browser.eval(PAGE_STATE))
