"""MqttSink against real Mosquitto processes started on free loopback ports (issue #5)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiomqtt
import jsonschema
import pytest
from mosquitto_helpers import (
    Collector,
    Mosquitto,
    free_port,
    make_event,
    make_password_file,
    make_tls_files,
    mosquitto,
)

from emomon.services.events import load_schema
from emomon.services.publish.base import SinkError
from emomon.services.publish.mqtt import MqttSink, ReconnectPolicy
from emomon.services.settings import MqttSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
__all__ = ["mosquitto"]  # the fixture, imported for pytest

FAST = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.5)
EVENT_SCHEMA = load_schema()


def sink_for(url: str, **kw: object) -> MqttSink:
    settings = MqttSettings(url=url, **kw)  # type: ignore[arg-type]
    return MqttSink(settings, sessions=["call-1"], reconnect=FAST)


async def retained(port: int, topic: str, timeout_s: float = 0.5) -> dict[str, bytes]:
    """What a subscriber arriving now gets as retained messages on ``topic`` (a filter)."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for m in client.messages:
                    if m.retain:
                        assert isinstance(m.payload, bytes)
                        got[str(m.topic)] = m.payload
        except TimeoutError:
            pass
    return got


def test_topics_payloads_and_retained_state(mosquitto: Mosquitto) -> None:
    """One emotion message per event on the speaker's topic, all schema-valid; a late subscriber
    gets both speakers' latest state and ``online``; a clean close leaves ``offline``."""

    async def main() -> None:
        events = [
            make_event("call-1", spk, i, label)
            for i, (spk, label) in enumerate(
                [("alice", "joy"), ("bob", "anger"), ("alice", "sadness"), ("bob", "neutral")]
            )
        ]
        sink = sink_for(mosquitto.url)
        async with Collector(mosquitto.port, "emomon/#") as sub:
            await sink.start()
            for ev in events:
                await sink.publish(ev)
            # each event's retained /state goes out after its /events message
            await sub.wait_for(lambda: len(sub.on("/events")) == 4 and len(sub.on("/state")) == 4)
            late = await retained(mosquitto.port, "emomon/#")
            await sink.close()
            await sub.wait_for(lambda: sub.on("emomon/status")[-1:] == [b"offline"])

        alice = [json.loads(p) for p in sub.on("emomon/call-1/alice/emotion")]
        bob = [json.loads(p) for p in sub.on("emomon/call-1/bob/emotion")]
        assert [e["label"] for e in alice] == ["joy", "sadness"]
        assert [e["label"] for e in bob] == ["anger", "neutral"]
        for topic, payload, _ in sub.messages:
            if "/status" not in topic:
                jsonschema.validate(json.loads(payload), EVENT_SCHEMA)
        assert [json.loads(p)["speaker"] for p in sub.on("emomon/call-1/events")] == [
            "alice",
            "bob",
            "alice",
            "bob",
        ]
        assert all(not r for t, _, r in sub.messages if t.endswith(("/emotion", "/events")))

        own = f"emomon/status/{sink.instance}"
        assert late["emomon/status"] == late[own] == b"online"
        assert json.loads(late["emomon/call-1/alice/state"])["label"] == "sadness"
        assert json.loads(late["emomon/call-1/bob/state"])["label"] == "neutral"
        assert set(late) == {
            "emomon/status",
            own,
            "emomon/call-1/alice/state",
            "emomon/call-1/bob/state",
        }
        after = await retained(mosquitto.port, "emomon/status/#")
        assert after == {"emomon/status": b"offline", own: b"offline"}
        c = sink.counters
        assert (c["queued"], c["sent"], c["dropped"], c["pending"]) == (4, 4, 0, 0)

    asyncio.run(main())


def test_unsafe_speaker_and_session_names_stay_one_topic_level(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        sink = MqttSink(MqttSettings(url=mosquitto.url, topic_prefix="home/emomon"), reconnect=FAST)
        async with Collector(mosquitto.port, "home/emomon/#") as sub:
            await sink.start()
            await sink.publish(make_event("a/b#c", "x+y/z", 0))
            await sub.wait_for(lambda: len(sub.on("/emotion")) == 1)
            await sink.close()
        topic = next(t for t, _, _ in sub.messages if t.endswith("/emotion"))
        assert topic == "home/emomon/a_b_c/x_y_z/emotion"
        assert (
            json.loads(sub.on("/emotion")[0])["speaker"] == "x+y/z"
        )  # the payload keeps the real name

    asyncio.run(main())


def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """Crash the broker while events stream, keep publishing while it is down, restart it on the
    same port: the persistent QoS-1 subscriber ends up with every event at least once.

    Why this is honest: the subscriber has a persistent session (fixed id, clean_session=False)
    saved in the broker's database before the crash, so the restarted broker queues for it
    whatever the sink re-sends, even before the subscriber is back. The broker is first frozen
    (SIGSTOP) so that a batch is provably *in flight* (sent, never PUBACKed) when it is killed
    (SIGKILL); those events can only arrive through the sink's re-send after the reconnect
    (``resent``), and the ones published while it is dead only through the outbox (``pending``).
    """
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()

    async def main() -> None:
        # Register the persistent session and have it saved (SIGTERM writes the database).
        async with Collector(
            broker.port, "emomon/+/+/emotion", client_id="restart-sub", clean=False
        ):
            pass
        broker.stop(signal.SIGTERM)
        broker.start()

        sink = sink_for(broker.url)
        sent: list[str] = []

        async def stream(first: int, n: int, pause_s: float = 0.0) -> None:
            for i in range(first, first + n):
                ev = make_event("call-1", "alice" if i % 2 else "bob", i)
                await sink.publish(ev)
                sent.append(ev.event_id)
                await asyncio.sleep(pause_s)

        async with Collector(
            broker.port, "emomon/+/+/emotion", client_id="restart-sub", clean=False
        ) as sub:
            await sink.start()
            await stream(0, 50, pause_s=0.001)  # delivered normally
            broker.freeze()
            await stream(50, 50, pause_s=0.001)  # sent into a frozen broker: in flight
            await asyncio.sleep(0.1)
            assert sink.counters["pending"] >= 50  # (plus any of the first 50 not yet acknowledged)
            broker.stop(signal.SIGKILL)  # a crash: no PUBACKs, no clean disconnect
            await stream(100, 50)  # broker dead: held in the outbox
            await asyncio.sleep(0.2)
            assert sink.counters["pending"] >= 100
            broker.start()
            await stream(150, 50, pause_s=0.001)
            got = lambda: {json.loads(p)["event_id"] for p in sub.on("/emotion")}  # noqa: E731
            await sub.wait_for(lambda: got() >= set(sent), timeout_s=10)
            await sink.close()
        c = sink.counters
        assert c["dropped"] == 0 and c["pending"] == 0 and c["sent"] == len(sent) == 200
        assert c["reconnects"] >= 1 and c["resent"] >= 1
        assert len(sub.on("/emotion")) >= len(sent)  # duplicates allowed, losses not

    try:
        asyncio.run(main())
    finally:
        broker.stop(signal.SIGKILL)


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from emomon.services.publish.mqtt import MqttSink
    from emomon.services.settings import MqttSettings

    async def main():
        sink = MqttSink(MqttSettings(url=sys.argv[1]))
        await sink.start()
        print("started", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_sigkill_of_the_sink_process_publishes_offline_last_will(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        async with Collector(mosquitto.port, "emomon/status") as sub:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, mosquitto.url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                assert child.stdout is not None
                line = await asyncio.to_thread(child.stdout.readline)
                assert line == b"started\n", child.stderr.read() if child.stderr else b""
                await sub.wait_for(lambda: sub.on("emomon/status")[-1:] == [b"online"])
                child.send_signal(signal.SIGKILL)
                await asyncio.to_thread(child.wait, 5)
                await sub.wait_for(
                    lambda: sub.on("emomon/status")[-1:] == [b"offline"], timeout_s=3
                )
            finally:
                child.kill()
        assert (await retained(mosquitto.port, "emomon/status"))["emomon/status"] == b"offline"

    asyncio.run(main())


def test_home_assistant_discovery_retained_and_reannounced(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        sink = sink_for(mosquitto.url, ha_discovery=True)
        await sink.start()
        await sink.publish(make_event("call-1", "alice", 0))
        await sink.publish(make_event("call-1", "bob", 1))
        await asyncio.sleep(0)
        async with Collector(mosquitto.port, "emomon/call-1/+/state") as states:
            await states.wait_for(lambda: len(states.messages) == 2)
        configs = await retained(mosquitto.port, "homeassistant/sensor/+/config")
        assert set(configs) == {
            "homeassistant/sensor/emomon_call-1_alice/config",
            "homeassistant/sensor/emomon_call-1_bob/config",
        }
        alice = json.loads(configs["homeassistant/sensor/emomon_call-1_alice/config"])
        for key in (
            "name",
            "unique_id",
            "state_topic",
            "value_template",
            "json_attributes_topic",
            "availability",
            "device",
        ):
            assert key in alice, key
        assert alice["state_topic"] == alice["json_attributes_topic"] == "emomon/call-1/alice/state"
        assert alice["availability"] == [
            {
                "topic": f"emomon/status/{sink.instance}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        assert alice["availability_mode"] == "any"
        assert (
            alice["unique_id"]
            != json.loads(configs["homeassistant/sensor/emomon_call-1_bob/config"])["unique_id"]
        )
        assert "joy" in alice["options"]

        # Home Assistant restarts: it publishes "online" on its status topic; the sink re-announces.
        async with Collector(mosquitto.port, "homeassistant/sensor/+/config") as cfg:
            await cfg.wait_for(lambda: len(cfg.messages) == 2)  # the two retained ones
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as ha:
                await ha.publish("homeassistant/status", "online", qos=1)
            await cfg.wait_for(lambda: len(cfg.messages) == 4)
            assert not any(
                r for _, _, r in cfg.messages[2:]
            )  # live re-announcements, not retained copies
        await sink.close()

    asyncio.run(main())


def test_wrong_credentials_give_one_line_sink_error(tmp_path: Path) -> None:
    pw = make_password_file(tmp_path / "passwd", "emo", "right")
    broker = Mosquitto(tmp_path / "broker", password_file=pw)
    broker.start()

    async def main() -> None:
        bad = sink_for(f"mqtt://emo:wrong@127.0.0.1:{broker.port}")
        with pytest.raises(SinkError) as err:
            await bad.start()
        msg = str(err.value)
        assert "\n" not in msg and "refused" in msg and "password" in msg and "wrong" not in msg
        good = sink_for(f"mqtt://emo:right@127.0.0.1:{broker.port}")
        await good.start()
        await good.close()

    try:
        asyncio.run(main())
    finally:
        broker.stop(signal.SIGKILL)


def test_tls_with_ca_and_client_certificate(tmp_path: Path) -> None:
    """mqtts:// with our CA and a client certificate; without the client certificate the broker
    refuses us and start() says so in one line."""
    tls = make_tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=tls)
    broker.start()
    url = f"mqtts://127.0.0.1:{broker.port}"

    async def main() -> None:
        sink = sink_for(
            url, ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key)
        )
        await sink.start()
        await sink.publish(make_event("call-1", "alice", 0))
        await sink.close()
        assert sink.counters["sent"] == 1
        with pytest.raises(SinkError) as err:
            await sink_for(url, ca_file=str(tls.ca)).start()
        assert "\n" not in str(err.value)

    try:
        asyncio.run(main())
    finally:
        broker.stop(signal.SIGKILL)


def test_unreachable_broker_fails_fast_or_waits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(SinkError) as err:
            await sink_for(f"mqtt://127.0.0.1:{port}").start()
        assert time.monotonic() - t0 < 3
        assert "\n" not in str(err.value) and f"127.0.0.1:{port}" in str(err.value)

        # wait_for_broker: start() returns at once, events wait in the outbox, logged retries,
        # then everything is delivered when the broker appears.
        waiting = sink_for(f"mqtt://127.0.0.1:{port}", wait_for_broker=True)
        with caplog.at_level(logging.WARNING, logger="emomon.services.publish.mqtt"):
            await waiting.start()
            await waiting.publish(make_event("call-1", "alice", 0))
            await asyncio.sleep(0.3)
        assert any("retrying in" in r.getMessage() for r in caplog.records)
        assert all(r.exc_info is None for r in caplog.records)
        broker = Mosquitto(tmp_path / "late", port=port)
        broker.start()
        try:
            async with Collector(port, "emomon/+/+/emotion") as sub:
                await sub.wait_for(lambda: len(sub.messages) == 1)
            await waiting.close()
        finally:
            broker.stop(signal.SIGKILL)
        assert waiting.counters["sent"] == 1

    asyncio.run(main())


def test_embedded_amqtt_broker_carries_events() -> None:
    from emomon.services.publish.broker import embedded_broker

    async def main() -> None:
        async with embedded_broker(port=0) as url:
            port = int(url.rsplit(":", 1)[1])
            sink = sink_for(url)
            async with Collector(port, "emomon/#") as sub:
                await sink.start()
                await sink.publish(make_event("call-1", "alice", 0))
                await sub.wait_for(lambda: len(sub.on("/state")) == 1)
                await sink.close()
            jsonschema.validate(json.loads(sub.on("/emotion")[0]), EVENT_SCHEMA)
            assert sub.on("emomon/status")[-1:] == [b"offline"]

    asyncio.run(main())
