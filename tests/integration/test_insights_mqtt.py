"""Trends and alerts on a real Mosquitto, and the dashboard surviving a broker restart (issue 17).

The publishing side is what `emomon run`/`emomon worker` build (``build_sinks``): the events'
MqttSink and the insights sink with its trend/alert publisher. The dashboard is the real
`emomon dashboard --mqtt-url` process, watched in headless Chromium.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from mosquitto_helpers import Collector, Mosquitto, free_port, make_event, mosquitto

from emomon.services.events import EmotionEvent
from emomon.services.pipeline import build_sinks
from emomon.services.settings import Settings
from tests.helpers.chromium import Browser, page_state, require_chromium

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
__all__ = ["mosquitto"]

RULE = "anger >= 0.7 in 2 of last 3"
RULE_NAME = "anger_ge_0_7_in_2_of_last_3"


def angry(i: int, speaker: str = "A", anger: float = 0.85) -> EmotionEvent:
    ev = make_event("call", speaker, i, label="anger")
    probs = dict.fromkeys(ev.probabilities, (1 - anger) / 6) | {"anger": anger}
    return dataclasses.replace(ev, probabilities=probs, confidence=anger)


def settings_for(url: str, **mqtt: object) -> Settings:
    return Settings.model_validate(
        {
            "mqtt": {"url": url, **mqtt},
            "console": {"enabled": False},
            "alerts": {"rules": [RULE]},
            "trends": {"window_s": 30},
        }
    )


async def publish(sinks, events) -> None:  # type: ignore[no-untyped-def]
    for ev in events:
        for sink in sinks:
            await sink.publish(ev)


def test_alert_and_trend_messages_reach_the_broker(mosquitto: Mosquitto) -> None:
    settings = settings_for(mosquitto.url, ha_discovery=True)

    async def main() -> tuple[list, list]:
        sinks = build_sinks(settings, ["call"])
        assert [s.name for s in sinks] == ["mqtt", "insights"]
        async with Collector(mosquitto.port, "#") as live:
            for s in sinks:
                await s.start()
            await publish(sinks, [angry(i) for i in range(4)])
            await live.wait_for(lambda: live.on("/call/A/alert") and live.on("/call/A/trend"))
            for s in sinks:
                await s.close()
        # a subscriber that comes later gets the retained trend, alert state and HA config
        async with Collector(mosquitto.port, "#") as late:
            await late.wait_for(lambda: len(late.messages) >= 4)
            await asyncio.sleep(0.3)
        return live.messages, late.messages

    live, late = asyncio.run(main())
    alerts = [json.loads(p) for t, p, _ in live if t == "emomon/call/A/alert"]
    assert [a["state"] for a in alerts] == ["firing"]  # once per episode, not on every event
    assert alerts[0]["rule"] == RULE_NAME and alerts[0]["when"] == RULE
    assert alerts[0]["value"] == 0.85 and alerts[0]["event_id"] == angry(1).event_id
    retained = {t: p for t, p, r in late if r}
    trend = json.loads(retained["emomon/call/A/trend"])
    assert trend["events"] == 4 and trend["share"]["anger"] == 1.0 and trend["window_s"] == 30
    assert trend["mean_valence"] < -0.5 and 0.7 < trend["mean_arousal"] <= 1.0
    assert retained[f"emomon/call/A/alert/{RULE_NAME}"] == b"ON"
    config = json.loads(
        retained[f"homeassistant/binary_sensor/emomon_call_A_alert_{RULE_NAME}/config"]
    )
    assert config["state_topic"] == f"emomon/call/A/alert/{RULE_NAME}"
    assert (config["payload_on"], config["payload_off"]) == ("ON", "OFF")
    assert config["device"]["identifiers"] == ["emomon_call"]  # beside the emotion sensor
    assert "emomon/call/A/state" in retained  # the events' own topics are unchanged


def test_alert_clears_then_fires_again(mosquitto: Mosquitto) -> None:
    settings = settings_for(mosquitto.url)

    async def main() -> list:
        sinks = build_sinks(settings, ["call"])
        async with Collector(mosquitto.port, "emomon/call/A/alert") as sub:
            for s in sinks:
                await s.start()
            seq = [0.9, 0.9, 0.1, 0.1, 0.9, 0.9]
            await publish(sinks, [angry(i, anger=a) for i, a in enumerate(seq)])
            await sub.wait_for(lambda: len(sub.messages) >= 3)
            for s in sinks:
                await s.close()
        return sub.messages

    states = [json.loads(p)["state"] for _, p, _ in asyncio.run(main())]
    assert states == ["firing", "cleared", "firing"]


def _wait_line(proc: subprocess.Popen, path, needle: str, timeout_s: float = 60) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if needle in line:
                return line
        assert proc.poll() is None, path.read_text()
        time.sleep(0.1)
    raise AssertionError(path.read_text())


async def _until(browser: Browser, pred, what: str, timeout_s: float = 30) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        state = await page_state(browser)
        if pred(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"page never showed {what}: {state}")
        await asyncio.sleep(0.2)


def test_dashboard_survives_a_broker_restart(mosquitto: Mosquitto, tmp_path) -> None:
    require_chromium()
    port = free_port()
    log = tmp_path / "dashboard.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "emomon.services",
                "dashboard",
                "--mqtt-url",
                mosquitto.url,
                "--dashboard-port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}/"
    settings = settings_for(mosquitto.url, wait_for_broker=True)

    async def main() -> None:
        _wait_line(proc, log, "dashboard at")
        sinks = build_sinks(settings, ["call"])
        for s in sinks:
            await s.start()
        try:
            async with Browser(1200, 700) as browser:
                await browser.goto(url)
                await _until(browser, lambda s: s["connected"] == "true", "the MQTT connection")
                await publish(sinks, [angry(0, "A"), angry(1, "B"), angry(2, "A")])
                up = await _until(
                    browser, lambda s: s["events"] == 3 and len(s["lanes"]) == 2, "3 events"
                )
                assert not up["banner"]

                mosquitto.stop(signal.SIGKILL)
                down = await _until(browser, lambda s: bool(s["banner"]), "a banner")
                assert down["connected"] == "false" and "reconnecting" in down["banner"]
                async with aiohttp.ClientSession() as http, http.get(url + "api/state") as r:
                    assert (await r.json())["status"]["connected"] is False
                assert down["events"] == 3  # what was shown stays on the page

                mosquitto.start()
                await _until(
                    browser, lambda s: not s["banner"] and s["connected"] == "true", "no banner"
                )
                await publish(sinks, [angry(3, "B")])  # the publisher reconnects by itself too
                after = await _until(
                    browser, lambda s: s["events"] == 4, "the event after the restart"
                )
                assert after["trends"] == 2
        finally:
            for s in sinks:
                await s.close()

    try:
        asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(20)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text
    assert "retrying" in text  # the outage was reported as one line, not a traceback
