"""The dashboard's hub and web app (issue 17): snapshot + SSE updates, duplicates, JSONL loading,
the page's assets, and the CLI's one-line errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import pytest

from emomon.services.dashboard.feeds import load_jsonl
from emomon.services.dashboard.hub import CLIENT_QUEUE, DashboardHub
from emomon.services.dashboard.server import DashboardError, serve
from emomon.services.dashboard_settings import AlertSettings, TrendSettings
from emomon.services.insights import Insights, InsightsSink
from tests.integration.mosquitto_helpers import free_port, make_event


async def read_frames(resp: aiohttp.ClientResponse, n: int) -> list[tuple[str, dict]]:
    frames, kind = [], None
    while len(frames) < n:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            frames.append((kind, json.loads(line[6:])))
    return frames


def test_page_assets_state_and_stream():
    async def main() -> None:
        hub = DashboardHub(history=50, rules=(("r", "anger > 0.5"),))
        sink = InsightsSink(Insights(TrendSettings(), AlertSettings(rules=["anger > 0.3"])), [hub])
        await sink.publish(make_event("call", "A", 0, label="anger"))
        async with serve(hub, "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:
            assert url.startswith("http://127.0.0.1:")
            async with http.get(url) as r:
                html = await r.text()
                assert r.status == 200 and "/static/app.js" in html
            for name, kind in (("app.js", "javascript"), ("style.css", "css")):
                async with http.get(f"{url}static/{name}") as r:
                    assert r.status == 200 and kind in r.content_type
            async with http.get(f"{url}static/../settings.py") as r:
                assert r.status == 404
            async with http.get(f"{url}api/state") as r:
                state = await r.json()
            assert list(state["sessions"]["call"]["speakers"]) == ["A"]
            assert state["sessions"]["call"]["speakers"]["A"]["active"] == ["anger_gt_0_3"]
            async with http.get(f"{url}api/stream") as r:
                assert r.content_type == "text/event-stream"
                ((kind, snap),) = await read_frames(r, 1)
                assert kind == "snapshot" and len(snap["sessions"]["call"]["events"]) == 1
                await sink.publish(make_event("call", "B", 1, label="joy"))
                await sink.publish(make_event("call", "B", 1, label="joy"))  # redelivered
                hub.set_status(connected=False, detail="broker away")
                got = await read_frames(r, 3)
            assert [k for k, _ in got] == ["emotion", "trend", "status"]  # duplicate dropped
            assert got[0][1]["speaker"] == "B" and "valence" in got[0][1]
            assert got[2][1]["connected"] is False

    asyncio.run(main())


def test_a_page_that_lags_is_dropped_not_waited_for():
    async def main() -> None:
        hub = DashboardHub()
        frames = hub.frames()
        await anext(frames)  # the snapshot: the page is now subscribed
        for i in range(CLIENT_QUEUE + 5):  # nobody reads: the queue fills
            hub.add_event(make_event("s", "A", i).to_dict())
        assert hub.dropped_clients == 1
        rest = [f async for f in frames]  # ends instead of blocking the hub
        assert len(rest) < CLIENT_QUEUE

    asyncio.run(main())


def test_load_jsonl_recomputes_trends_and_skips_bad_lines(tmp_path, caplog):
    path = tmp_path / "call.jsonl"
    events = [make_event("call", "A", i, label="anger") for i in range(3)]
    lines = [e.to_json() for e in events]
    old = json.loads(lines[0])
    del old["valence"], old["arousal"]  # an event from before issue 17
    lines[0] = json.dumps(old)
    path.write_text("\n".join([*lines, "not json", '{"session": "x"}', ""]) + "\n")
    hub = DashboardHub()
    ins = Insights(
        TrendSettings(window_s=600), AlertSettings(rules=["anger >= 0.4 in 2 of last 3"])
    )
    assert load_jsonl(hub, [path], ins) == 3
    assert "2 lines are not emomon events" in caplog.text
    snap = hub.snapshot()
    evs = snap["sessions"]["call"]["events"]
    assert all(-1 <= e["valence"] <= 1 for e in evs)  # filled in for the old event
    sp = snap["sessions"]["call"]["speakers"]["A"]
    assert sp["trend"]["events"] == 3 and sp["active"] == ["anger_ge_0_4_in_2_of_last_3"]
    assert snap["status"]["live"] is False


def test_port_in_use_is_a_dashboard_error():
    async def main() -> None:
        async with serve(DashboardHub(), "127.0.0.1", 0) as url:
            port = int(url.rsplit(":", 1)[1].strip("/"))
            with pytest.raises(
                DashboardError, match=f"cannot serve the dashboard on 127.0.0.1:{port}"
            ):
                async with serve(DashboardHub(), "127.0.0.1", port):
                    pass

    asyncio.run(main())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "nothing to show: give --mqtt-url URL"),
        (["/nonexistent/events.jsonl"], "cannot read events from /nonexistent/events.jsonl"),
        (["--mqtt-url", "http://x"], "must start with mqtt:// or mqtts://"),
    ],
)
def test_dashboard_command_user_errors_are_one_line(args, says):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "emomon.services",
            "dashboard",
            "--dashboard-port",
            str(free_port()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("emomon: error")]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.stderr
