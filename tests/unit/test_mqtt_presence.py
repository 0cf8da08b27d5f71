"""Pure parts of the MQTT sink's availability, retained-state upkeep and crash policy (issue #18)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from emomon.services.events import EmotionEvent, load_schema
from emomon.services.publish import homeassistant
from emomon.services.publish.base import SinkError
from emomon.services.publish.mqtt.outbox import Outbox, PendingEvent
from emomon.services.publish.mqtt.presence import MAX_LISTED_INSTANCES, Presence
from emomon.services.publish.mqtt.states import LatestStates
from emomon.services.publish.mqtt.supervision import CrashGuard
from tests.helpers.factories import event


def test_presence_tracks_other_instances_only() -> None:
    p = Presence("home/emomon", "w1")
    assert p.own_topic == "home/emomon/status/w1" and p.filter == "home/emomon/status/+"
    assert not p.observe("home/emomon/status/w1", b"offline")  # our own retained message
    assert p.observe("home/emomon/status/w2", b"online")
    assert not p.observe("home/emomon/status/w2", b"online")  # no change
    assert p.observe("home/emomon/status/a0", b"online")
    assert p.online_instances() == ["w1", "a0", "w2"]  # own first, then sorted
    assert p.others_online()
    assert p.observe("home/emomon/status/w2", b"offline")
    assert p.observe("home/emomon/status/a0", b"")  # retained message cleared
    assert p.availability_topics() == ["home/emomon/status/w1"] and not p.others_online()
    for i in range(20):
        p.observe(f"home/emomon/status/x{i:02d}", b"online")
    assert len(p.availability_topics()) == MAX_LISTED_INSTANCES


def _state(end_s: float, eid: str = "ev-1") -> bytes:
    return json.dumps({"end_s": end_s, "event_id": eid}).encode()


def test_latest_states_republish_what_the_broker_lost_or_holds_older() -> None:
    s = LatestStates(maxsize=2)
    s.delivered("p/a/x/state", 5.0, "ev-a5", "A5")
    s.delivered("p/a/y/state", 3.0, "ev-a3", "B3")
    s.delivered("p/a/x/state", 4.0, "ev-a4", "A4")  # an older re-send does not replace the newest
    assert s.record("p/a/x/state").payload == "A5"  # type: ignore[union-attr]
    s.forget_broker()  # a reconnect
    assert {r.topic for r in s.stale()} == {"p/a/x/state", "p/a/y/state"}
    assert not s.observe("p/a/x/state", _state(5.0))  # the broker has ours
    assert s.observe("p/a/y/state", _state(1.0))  # older: publish ours again
    assert not s.observe("p/other/z/state", _state(0.0))  # not ours to care about
    assert [r.topic for r in s.stale()] == ["p/a/y/state"]
    assert s.observe("p/a/y/state", b"not json")
    s.delivered("p/b/z/state", 1.0, "ev-z", "Z")  # LRU bound of 2 drops the least recent
    assert len(s) == 2 and s.record("p/a/y/state") is None  # x was refreshed after y


def _pending(e: EmotionEvent) -> PendingEvent:
    return PendingEvent(e, e.to_json())


def test_crash_guard_drops_a_poison_head_and_stops_after_the_limit() -> None:
    outbox = Outbox(10)
    poison, good = event("u1", 2.0), event("u2", 3.0)
    outbox.put(_pending(poison))
    outbox.put(_pending(good))
    guard = CrashGuard(outbox, max_crashes=3)
    assert guard.restarting is None
    guard.crashed(TypeError("boom"))
    assert guard.restarting and "TypeError: boom" in guard.restarting and len(outbox) == 2
    guard.crashed(TypeError("boom"))  # same head twice: dropped
    assert (guard.poisoned, len(outbox), outbox.dropped) == (1, 1, 1)
    assert outbox.peek() is not None and outbox.peek().event.utterance_id == "u2"  # type: ignore[union-attr]
    with pytest.raises(SinkError, match="3 crashes in a row"):
        guard.crashed(ValueError("again"))
    guard.working()
    assert guard.restarting is None and guard.crashes == 3
    assert outbox.queued == outbox.sent + outbox.dropped + outbox.abandoned + outbox.pending


def test_discovery_availability_lists_instances_with_mode_any() -> None:
    cfg = homeassistant.sensor_config(
        session="call-1",
        speaker="alice",
        state_topic="emomon/call-1/alice/state",
        status_topic="emomon/status",
        qos=1,
        availability_topics=["emomon/status/w1", "emomon/status/w2"],
    )
    assert cfg["availability_mode"] == "any"
    assert [a["topic"] for a in cfg["availability"]] == ["emomon/status/w1", "emomon/status/w2"]
    jsonschema.validate(json.loads(json.dumps(cfg)), load_schema("mqtt_ha_sensor.v1.json"))
