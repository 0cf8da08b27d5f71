"""`emomon run --dashboard` on the shipped call, watched in a real headless Chromium (issue 17).

The call plays at real-time pace; while it plays the page must show both speakers' lanes and at
least 8 events, with transcripts, valence/arousal sparklines and trends. The screenshot is kept
in test-artifacts/ (TEST_ARTIFACTS_DIR); with UPDATE_DOCS_SCREENSHOTS=1 it also becomes
docs/img/dashboard.png, the picture docs/DASHBOARD.md shows. (Not EMOMON_* names: those are
settings, which emomon would refuse.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CALL_WAV
from tests.helpers.chromium import REPO, Browser, artifact_dir, page_state, require_chromium
from tests.integration.mosquitto_helpers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RULE = '[{"name": "steady", "when": "neutral >= 0.8 in 3 of last 4"}]'


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise AssertionError(f"emomon exited {proc.returncode}: {path.read_text()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {needle!r} within {timeout_s} s: {path.read_text()[-2000:]}")


async def watch(url: str, proc: subprocess.Popen, shot: Path) -> dict:
    async with Browser(1400, 760) as browser:
        await browser.goto(url)
        deadline = time.monotonic() + 240
        state: dict = {}
        while time.monotonic() < deadline:
            state = await page_state(browser)
            # success first: on a slow machine the last event and the end of the call can
            # arrive between two polls
            if len(set(state["lanes"])) >= 2 and state["events"] >= 8 and state["trends"] >= 2:
                break
            # "false" only once the page has heard from emomon: before its first snapshot it
            # says "unknown" (connecting), which a cold first start can keep for a while
            if state["live"] == "false" or proc.poll() is not None:
                pytest.fail(f"the call ended before the page showed enough: {state}")
            await asyncio.sleep(0.5)
        else:
            pytest.fail(f"page never showed 2 lanes and 8 events: {state}")
        await asyncio.sleep(0.3)  # the last update's frame
        await browser.screenshot(shot)
        return state


def test_run_dashboard_shows_both_speakers_while_the_call_plays(tmp_path):
    require_chromium()
    port = free_port()
    log = tmp_path / "emomon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "emomon.services",
                "run",
                "--source",
                f"file:{CALL_WAV}",
                "--num-speakers",
                "2",
                "--realtime",
                "--dashboard",
                "--dashboard-port",
                str(port),
                "--no-console",
                "--set",
                f"alerts.rules={RULE}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        line = wait_for_line(log, "dashboard at", proc, 180)
        url = line.split("dashboard at", 1)[1].strip()
        assert url == f"http://127.0.0.1:{port}/"
        shot = artifact_dir() / "dashboard.png"
        state = asyncio.run(watch(url, proc, shot))
        assert {"speaker_1", "speaker_2"} <= set(state["lanes"]), state
        assert state["texts"] >= 4 and state["sparks"] >= 4, state  # transcripts, V/A lines
        assert state["connected"] == "true" and not state["banner"]
        assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
        if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
            shutil.copy(shot, REPO / "docs" / "img" / "dashboard.png")
        # after the call the page says so, and Ctrl-C ends the lingering server cleanly
        wait_for_line(log, "the dashboard stays at", proc, 120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    assert rc == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
