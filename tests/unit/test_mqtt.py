"""Unit tests of the MQTT sink's pure parts: topic sanitising, URL parsing, backoff, outbox."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emomon.services.events import EmotionEvent, load_schema
from emomon.services.publish import homeassistant
from emomon.services.publish.base import Sink, SinkError
from emomon.services.publish.mqtt import (
    MAX_SEGMENT_BYTES,
    MqttSink,
    Outbox,
    PendingEvent,
    ReconnectPolicy,
    Topics,
    parse_mqtt_url,
    sanitize_segment,
    validate_prefix,
)
from emomon.services.settings import MqttSettings


def event(i: int, speaker: str = "alice", session: str = "s1") -> EmotionEvent:
    return EmotionEvent(
        session=session,
        speaker=speaker,
        utterance_id=f"{session}:{i}",
        channel="0",
        start_s=i,
        end_s=i + 1.0,
        label="joy",
        confidence=0.9,
        probabilities={"joy": 0.9, "neutral": 0.1},
        modalities=("text",),
        model_id="m",
        latency_ms=1.0,
    )


def pending(i: int) -> PendingEvent:
    ev = event(i)
    return PendingEvent(ev, ev.to_json())


# -- topics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("alice", "alice"),
        ("a/b", "a_b"),
        ("+", "_"),
        ("#", "_"),
        ("x\x00y", "x_y"),
        ("", "_"),
        ("Zoë Müller", "Zoë Müller"),
        ("tab\there", "tab_here"),
    ],
)
def test_sanitize_examples(raw: str, safe: str) -> None:
    assert sanitize_segment(raw) == safe


@given(st.text())
def test_sanitize_always_gives_one_valid_level(raw: str) -> None:
    safe = sanitize_segment(raw)
    assert safe
    assert not set(safe) & {"+", "#", "/", "\x00"}
    assert len(safe.encode("utf-8")) <= MAX_SEGMENT_BYTES
    assert sanitize_segment(safe) == safe  # idempotent


def test_sanitize_cuts_long_names_on_a_character_boundary() -> None:
    safe = sanitize_segment("é" * 200)
    assert safe == "é" * (MAX_SEGMENT_BYTES // 2)


def test_sanitize_handles_lone_surrogates() -> None:
    safe = sanitize_segment("call-\udcff.wav")
    safe.encode("utf-8")  # must not raise


def test_topics() -> None:
    t = Topics("emomon", "homeassistant")
    assert t.emotion("call/1", "spk+0") == "emomon/call_1/spk_0/emotion"
    assert t.state("call-1", "") == "emomon/call-1/_/state"
    assert t.events("call-1") == "emomon/call-1/events"
    assert t.status == "emomon/status"
    assert t.ha_config("call 1", "Zoë") == "homeassistant/sensor/emomon_call_1_Zo_/config"
    assert t.ha_status == "homeassistant/status"


@pytest.mark.parametrize("prefix", ["", "a//b", "a/+", "#", "$SYS", "a\x00"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(SinkError):
        validate_prefix(prefix)


def test_multi_level_prefix_is_allowed() -> None:
    assert validate_prefix("home/emomon") == "home/emomon"


# -- URL ---------------------------------------------------------------------------------------


def test_parse_url() -> None:
    a = parse_mqtt_url("mqtts://us%40er:p%3Ass@broker.lan")
    assert (a.host, a.port, a.tls, a.username, a.password) == (
        "broker.lan",
        8883,
        True,
        "us@er",
        "p:ss",
    )
    assert "p:ss" not in a.display and a.display == "mqtts://us@er@broker.lan:8883"
    b = parse_mqtt_url("mqtt://127.0.0.1:1884")
    assert (b.host, b.port, b.tls, b.username) == ("127.0.0.1", 1884, False, None)
    assert parse_mqtt_url("mqtt://[::1]:1883").display == "mqtt://[::1]:1883"


@pytest.mark.parametrize(
    "url", ["http://x", "mqtt://", "mqtt://h:99999", "mqtt://h/topic", "mqtt://h:port"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(SinkError) as e:
        parse_mqtt_url(url)
    assert "\n" not in str(e.value)


def test_missing_tls_files_are_a_sink_error() -> None:
    with pytest.raises(SinkError, match="TLS"):
        MqttSink(MqttSettings(url="mqtts://h", ca_file="/nonexistent/ca.pem"))


# -- reconnect policy --------------------------------------------------------------------------


def test_backoff_grows_and_is_capped() -> None:
    p = ReconnectPolicy(initial_delay_s=0.5, max_delay_s=4.0, multiplier=2.0, jitter=0.0)
    assert [p.delay_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_stays_in_band() -> None:
    p = ReconnectPolicy(initial_delay_s=1.0, max_delay_s=1.0, jitter=0.2)
    assert p.delay_s(1, rand=lambda: 0.0) == pytest.approx(0.8)
    assert p.delay_s(1, rand=lambda: 1.0) == pytest.approx(1.2)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(initial_delay_s=5, max_delay_s=1)


# -- outbox ------------------------------------------------------------------------------------


def test_outbox_drops_oldest_when_full() -> None:
    box = Outbox(3)
    drops = [box.put(pending(i)) for i in range(5)]
    assert drops == [0, 0, 0, 1, 1]
    assert (box.queued, box.dropped, box.pending) == (5, 2, 3)
    assert [p.event.utterance_id for p in box.take(10)] == ["s1:2", "s1:3", "s1:4"]


def test_outbox_puts_undelivered_back_in_order() -> None:
    box = Outbox(10)
    for i in range(4):
        box.put(pending(i))
    batch = box.take(3)
    assert box.pending == 4 and len(box) == 1
    box.settle(batch, [True, False, False])
    assert (box.sent, box.resent, box.pending) == (1, 2, 3)
    assert [p.event.utterance_id for p in box.take(10)] == ["s1:1", "s1:2", "s1:3"]


def test_outbox_overflow_while_in_flight_is_counted_once() -> None:
    box = Outbox(2)
    box.put(pending(0))
    box.put(pending(1))
    batch = box.take(2)  # both in flight
    box.put(pending(2))
    box.put(pending(3))  # waiting is full again (2)
    assert box.settle(batch, [False, False]) == 2  # put back -> 4 waiting -> the 2 oldest dropped
    assert [p.event.utterance_id for p in box.take(10)] == ["s1:2", "s1:3"]
    assert box.dropped == 2


@given(
    st.lists(st.tuples(st.sampled_from(["put", "take", "settle"]), st.integers(0, 5)), max_size=60),
    st.integers(1, 5),
)
def test_outbox_invariant(ops: list[tuple[str, int]], size: int) -> None:
    box = Outbox(size)
    in_flight: list[list[PendingEvent]] = []
    n = 0
    for op, k in ops:
        if op == "put":
            box.put(pending(n))
            n += 1
        elif op == "take" and not in_flight:
            in_flight.append(box.take(k + 1))
        elif op == "settle" and in_flight:
            batch = in_flight.pop()
            box.settle(batch, [(i + k) % 2 == 0 for i in range(len(batch))])
        assert box.queued == box.sent + box.dropped + box.abandoned + box.pending
        assert len(box) <= size
        assert box.idle.is_set() == (box.pending == 0)
    box.abandon()
    assert box.queued == box.sent + box.dropped + box.abandoned + len(sum(in_flight, []))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sink_counts_and_logs_drops_while_broker_is_away(caplog: pytest.LogCaptureFixture) -> None:
    """No broker at all (wait_for_broker): publish never blocks, the bound holds, drops are
    counted and logged with the count, and close() reports what it had to abandon."""
    settings = MqttSettings(
        url=f"mqtt://127.0.0.1:{_closed_port()}", outbox_size=3, wait_for_broker=True
    )
    sink = MqttSink(settings, reconnect=ReconnectPolicy(0.05, 0.1), flush_timeout_s=0.2)
    assert isinstance(sink, Sink)

    async def main() -> None:
        await sink.start()
        for i in range(10):
            await sink.publish(event(i))
        await sink.close()

    with caplog.at_level(logging.WARNING, logger="emomon.services.publish.mqtt"):
        asyncio.run(main())
    c = sink.counters
    assert (c["queued"], c["dropped"], c["sent"], c["abandoned"], c["pending"]) == (10, 7, 0, 3, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 dropped so far" in m for m in messages)  # first drop logged (rate-limited after)
    assert any("7 events dropped in total" in m for m in messages)
    assert any("3 undelivered events abandoned" in m for m in messages)


def test_publish_before_start_is_an_error() -> None:
    sink = MqttSink(MqttSettings(url="mqtt://127.0.0.1:1"))
    with pytest.raises(SinkError):
        asyncio.run(sink.publish(event(0)))


def test_sink_requires_url() -> None:
    with pytest.raises(SinkError, match="--mqtt-url"):
        MqttSink(MqttSettings())


# -- Home Assistant ----------------------------------------------------------------------------


def test_ha_config_validates_against_its_schema() -> None:
    cfg = homeassistant.sensor_config(
        session="call 1",
        speaker="Zoë",
        state_topic="emomon/call 1/Zoë/state",
        status_topic="emomon/status",
        qos=1,
    )
    jsonschema.validate(json.loads(json.dumps(cfg)), load_schema("mqtt_ha_sensor.v1.json"))
    assert cfg["unique_id"] == "emomon_call_1_Zo_"
    assert cfg["options"] == list(load_schema()["properties"]["label"]["enum"])
    assert cfg["device"]["identifiers"] == ["emomon_call_1"]
