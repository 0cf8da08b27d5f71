"""Untrusted dashboard input (MQTT messages, JSONL lines) is checked before it enters the hub:
a bad message is dropped and counted, and pages still open afterwards."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest

from emomon.services.dashboard.feeds import MqttFeed, load_jsonl
from emomon.services.dashboard.hub import MAX_SESSIONS, DashboardHub
from emomon.services.dashboard_settings import AlertSettings, TrendSettings
from emomon.services.insights import Insights
from emomon.services.settings import MqttSettings
from tests.integration.mosquitto_helpers import make_event


def first_page(hub: DashboardHub) -> dict:
    async def main() -> dict:
        frame = await anext(hub.frames())
        return json.loads(frame.decode().split("data: ", 1)[1])

    return asyncio.run(main())


def good_trend() -> dict:
    ins = Insights(TrendSettings(), AlertSettings())
    return ins.update(make_event("s", "A", 0).to_dict()).trend


BAD = [
    ("s/A/trend", json.dumps(good_trend()).replace('"window_s": 60.0', '"window_s": NaN')),
    ("s/A/trend", json.dumps({**good_trend(), "share": "everything"})),
    ("s/A/alert", json.dumps({"session": "s", "speaker": "A", "rule": "r", "state": "on"})),
    ("s/events", json.dumps({**make_event("s", "A", 1).to_dict(), "confidence": "high"})),
    ("s/events", json.dumps({**make_event("s", "A", 2).to_dict(), "start_s": -1})),
    ("s/events", json.dumps({**make_event("s", "A", 3).to_dict(), "speaker": 12345})),
    ("s/events", '{"a": ' * 100_000),
    ("s/events", "[1, 2]"),
]


@pytest.mark.parametrize(("topic", "payload"), BAD)
def test_a_bad_mqtt_message_is_dropped_and_pages_still_open(topic, payload):
    assert "NaN" in BAD[0][1]
    hub = DashboardHub()
    feed = MqttFeed(MqttSettings(url="mqtt://127.0.0.1:1"), hub)
    feed._handle(f"emomon/{topic}", payload.encode())
    assert feed.dropped == 1 and hub.sessions == {}
    feed._handle("emomon/s/events", make_event("s", "A", 9).to_json().encode())
    feed._handle("emomon/s/A/trend", json.dumps(good_trend()).encode())
    assert feed.dropped == 1
    snap = first_page(hub)
    assert len(snap["sessions"]["s"]["events"]) == 1
    assert snap["sessions"]["s"]["speakers"]["A"]["trend"]["window_s"] == 60.0


def test_jsonl_lines_with_bad_values_are_skipped(tmp_path, caplog):
    good = make_event("s", "A", 0).to_dict()
    lines = [
        json.dumps({**good, "end_s": None}),
        json.dumps({**make_event("s", "A", 1).to_dict(), "end_s": float("nan")}),
        json.dumps({**make_event("s", "A", 2).to_dict(), "probabilities": {"joy": "x"}}),
        json.dumps(good),
    ]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines) + "\n")
    hub = DashboardHub()
    assert load_jsonl(hub, [path], Insights(TrendSettings(), AlertSettings())) == 1
    assert "3 lines are not emomon events" in caplog.text
    assert len(first_page(hub)["sessions"]["s"]["events"]) == 1


@pytest.mark.parametrize(("host", "warns"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_a_dashboard_beyond_loopback_is_warned_about(host, warns, caplog):
    from emomon.services.dashboard.server import is_loopback, serve

    async def main() -> None:
        async with serve(DashboardHub(), host, 0):
            pass

    asyncio.run(main())
    assert ("anyone who can reach port" in caplog.text) is warns
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("example.org") and not is_loopback("::")


PAGE_HARNESS = r"""
const fs = require("fs"), vm = require("vm");
function fake(tag) {
  return { tag, children: [], style: {}, dataset: {}, hidden: false, textContent: "", attrs: {},
    childElementCount: 0, setAttribute(k, v) { this.attrs[k] = String(v); }, replaceWith() {},
    querySelector() { return null; },
    append(...c) { this.children.push(...c); this.childElementCount = this.children.length; } };
}
const els = {};
const ctx = { console, JSON, Object, Math, Set, String,
  document: { getElementById: (id) => els[id] || (els[id] = fake(id)), createElement: fake,
              createElementNS: (ns, t) => fake(t), body: fake("body") },
  EventSource: class { constructor() { ctx.es = this; this.h = {}; }
                       addEventListener(k, f) { this.h[k] = f; } },
  requestAnimationFrame: (f) => f(), CSS: { escape: (s) => s } };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), ctx);
for (const [kind, data] of JSON.parse(fs.readFileSync(0, "utf8"))) ctx.es.h[kind]({ data });
const lanes = new Set(els.sessions.children.flatMap((s) => s.children)
  .filter((c) => c.attrs["data-speaker"]).map((c) => `${c.attrs["data-session"]}/${c.attrs["data-speaker"]}`));
const kept = Object.entries(vm.runInContext("model.sessions", ctx))
  .map(([sid, s]) => [sid, s.events.length, s.seen.size]);
console.log(JSON.stringify({ polluted: "trend" in {} || "alerts" in {}, lanes: [...lanes].sort(),
  kept }));
"""


def run_page(updates: list[tuple[str, str]]) -> dict:
    from importlib import resources

    app = resources.files("emomon.services.dashboard").joinpath("static", "app.js")
    r = subprocess.run(
        ["node", "-e", PAGE_HARNESS, str(app)],
        input=json.dumps(updates),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node runs the page's script")


@needs_node
def test_the_page_takes_prototype_names_as_plain_names():
    updates = []
    for session, speaker in (("__proto__", "A"), ("call", "__proto__"), ("call", "constructor")):
        ev = {**make_event(session, speaker, 0).to_dict(), "session": session}
        trend = {**good_trend(), "session": session, "speaker": speaker}
        updates += [("emotion", json.dumps(ev)), ("trend", json.dumps(trend))]
    got = run_page(updates)
    assert not got["polluted"]
    assert got["lanes"] == ["__proto__/A", "call/__proto__", "call/constructor"]


@needs_node
def test_a_page_left_open_keeps_only_the_history_a_new_page_gets():
    hub = DashboardHub(history=10)
    snapshot = json.dumps(hub.snapshot())
    live = [("emotion", make_event("s", "A", i).to_json()) for i in range(25)]
    assert run_page([("snapshot", snapshot), *live])["kept"] == [["s", 10, 10]]


def test_the_hub_keeps_the_latest_sessions_only():
    hub = DashboardHub(history=10)
    for i in range(MAX_SESSIONS + 5):
        hub.add_event(make_event(f"s{i}", "A", 0).to_dict())
        hub.add_event(make_event("s0", "A", i + 1).to_dict())  # s0 stays in use
    assert len(hub.sessions) == MAX_SESSIONS
    assert "s0" in hub.sessions and "s1" not in hub.sessions
    assert f"s{MAX_SESSIONS + 4}" in hub.sessions


def test_on_loopback_only_loopback_names_are_answered():
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends that name
    as Host; the dashboard must not hand it the transcripts."""
    import aiohttp

    from emomon.services.dashboard.server import serve

    async def main() -> None:
        hub = DashboardHub()
        hub.add_event(make_event("s", "A", 0).to_dict())
        async with serve(hub, "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:
            port = url.rsplit(":", 1)[1].strip("/")
            for host, code in (
                ("evil.example", 421),
                (f"evil.example:{port}", 421),
                (f"localhost:{port}", 200),
                (f"127.0.0.1:{port}", 200),
                (f"[::1]:{port}", 200),
            ):
                for path in ("api/state", "api/stream", ""):
                    async with http.get(f"{url}{path}", headers={"Host": host}) as r:
                        assert r.status == code, (host, path)
                        if code == 200:
                            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                            assert r.headers["X-Content-Type-Options"] == "nosniff"

    asyncio.run(main())
