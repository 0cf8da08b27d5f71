"""Replaying the recorded phone call through the whole pipeline into a real Mosquitto (issue #5).

Real file source, real VAD, real speaker attribution, real Whisper (the shipped tiny model) and,
when it is present, the shipped emotion checkpoint. Until that checkpoint ships, a stand-in
classifier (behind the worker's ``EmotionClassifier`` protocol) labels utterances so that this
test still checks what it is about: the MQTT side of a real replay.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mosquitto_helpers import Collector, Mosquitto, mosquitto

from emomon.services.events import load_schema
from emomon.services.publish.mqtt import MqttSink
from emomon.services.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["mosquitto"]

WAV = Path(__file__).resolve().parents[1] / "data" / "phone-call-2spk.wav"


def _worker(settings: Settings) -> Any:
    from emomon.services.worker import FusionWorker

    return FusionWorker(settings.worker)  # the real shipped checkpoint


def test_replay_phone_call_publishes_per_speaker_events(mosquitto: Mosquitto) -> None:
    from emomon.services.pipeline import Pipeline, build_sinks, build_source

    settings = Settings.model_validate(
        {
            "mqtt": {"url": mosquitto.url, "ha_discovery": True},
            "console": {"enabled": False},
            "speakers": {"num_speakers": 2},  # a phone call has two parties
        }
    )
    session = "phone-call"

    async def main() -> tuple[Collector, Collector, list[Any]]:
        sinks = build_sinks(settings, [session])  # the factory `emomon run` uses
        # the events' sink, then the trend/alert topics' (issue 17)
        assert [s.name for s in sinks] == ["mqtt", "insights"]
        sink = sinks[0]
        assert isinstance(sink, MqttSink)
        pipeline = Pipeline(settings, sinks, worker=_worker(settings))
        try:
            async with Collector(mosquitto.port, "emomon/#") as sub:
                stats = await pipeline.run([(session, build_source(str(WAV), settings))])
                await sub.wait_for(lambda: len(sub.on("/events")) >= stats.events)
                # "offline" is the sink's last message: the states before it have arrived too
                await sub.wait_for(lambda: sub.on("emomon/status")[-1:] == [b"offline"])
        finally:
            pipeline.close()
        assert sink.counters["sent"] == stats.events and sink.counters["dropped"] == 0
        async with Collector(mosquitto.port, "homeassistant/sensor/+/config") as sub_ha:
            await asyncio.sleep(0.3)  # retained configs arrive at once
        return sub, sub_ha, stats.events_list

    sub, sub_ha, events = asyncio.run(main())
    assert len(events) >= 4
    speakers = {e.speaker for e in events}
    assert len(speakers) == 2, speakers  # a two-person call
    print(
        f"replay: {len(events)} events, speakers {sorted(speakers)}, {len(sub.messages)} MQTT messages"
    )

    schema = load_schema()
    for ev in events:
        mine = [json.loads(p) for p in sub.on(f"emomon/{session}/{ev.speaker}/emotion")]
        assert ev.event_id in {m["event_id"] for m in mine}
    for payload in sub.on("/emotion") + sub.on("/events") + sub.on("/state"):
        jsonschema.validate(json.loads(payload), schema)
    assert len(sub.on("/emotion")) == len(events)
    # the last event of each speaker is their retained state
    for spk in speakers:
        last = [e for e in events if e.speaker == spk][-1]
        assert json.loads(sub.on(f"emomon/{session}/{spk}/state")[-1])["event_id"] == last.event_id
    assert sub.on("emomon/status")[-1:] == [b"offline"]
    configs = [t for t, _, r in sub_ha.messages if r]
    assert len(configs) == len(speakers)  # one retained discovery config per speaker
