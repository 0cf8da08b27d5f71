"""Availability per instance, retained states after a broker loss, and a sink that survives its
own crash, against real Mosquitto processes (issue #18, item 2)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mosquitto_helpers import Collector, Mosquitto, make_event, make_password_file, mosquitto

from emomon.services.publish.mqtt import MqttSink, ReconnectPolicy
from emomon.services.settings import MqttSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["mosquitto"]  # the fixture, imported for pytest

FAST = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.5)

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from emomon.services.publish.mqtt import MqttSink
    from emomon.services.settings import MqttSettings
    from mosquitto_helpers import make_event

    async def main():
        url, instance, speaker = sys.argv[1:4]
        sink = MqttSink(MqttSettings(url=url, client_id=instance, ha_discovery=True))
        await sink.start()
        await asyncio.sleep(0.3)  # the other instances' retained status arrives
        await sink.publish(make_event("call-1", speaker, 0))
        while sink.counters["sent"] < 1:
            await asyncio.sleep(0.02)
        print("published", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def _spawn(url: str, instance: str, speaker: str) -> subprocess.Popen[bytes]:
    here = str(Path(__file__).parent)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, instance, speaker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**__import__("os").environ, "PYTHONPATH": here},
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == b"published\n", child.stderr.read() if child.stderr else b""
    return child


def test_one_killed_instance_marks_only_itself_offline(mosquitto: Mosquitto) -> None:
    """Two sink processes; SIGKILL one: its own topic goes offline by its last will, the other
    stays online and so does the aggregate; kill the last one too: the aggregate goes offline.
    Discovery configs list every online instance with HA's ``availability_mode: any``."""

    async def main() -> None:
        async with Collector(mosquitto.port, "#") as sub:
            w1 = await asyncio.to_thread(_spawn, mosquitto.url, "w1", "alice")
            w2 = await asyncio.to_thread(_spawn, mosquitto.url, "w2", "bob")
            try:

                def last(topic: str) -> bytes | None:
                    got = [p for t, p, _ in sub.messages if t == topic]
                    return got[-1] if got else None

                cfg = "homeassistant/sensor/emomon_call-1_bob/config"
                # w2 may announce bob before it has heard of w1: wait for the config with both
                await sub.wait_for(
                    lambda: len(json.loads(last(cfg) or b"{}").get("availability", [])) == 2
                )
                bob = json.loads(last(cfg) or b"{}")
                assert bob["availability_mode"] == "any"
                assert [a["topic"] for a in bob["availability"]] == [
                    "emomon/status/w2",
                    "emomon/status/w1",
                ]
                # w1 learns of w2 and re-announces alice's sensor with both instances
                alice_cfg = "homeassistant/sensor/emomon_call-1_alice/config"
                await sub.wait_for(
                    lambda: len(json.loads(last(alice_cfg) or b"{}").get("availability", [])) == 2
                )

                def aggregate() -> list[bytes]:
                    return [p for t, p, _ in sub.messages if t == "emomon/status"]

                n0 = len(aggregate())
                w1.send_signal(signal.SIGKILL)
                await asyncio.to_thread(w1.wait, 5)
                await sub.wait_for(lambda: last("emomon/status/w1") == b"offline", timeout_s=15)
                # the crashed main connection's will said "offline" on the aggregate; w2 puts
                # "online" back at once (the aggregate was "online" before the kill too: wait
                # for the will and the answer to it, not just for the last value)
                await sub.wait_for(
                    lambda: b"offline" in aggregate()[n0:] and aggregate()[-1] == b"online",
                    timeout_s=15,
                )
                await asyncio.sleep(0.5)
                assert last("emomon/status/w2") == b"online"
                assert last("emomon/status") == b"online"

                w2.send_signal(signal.SIGKILL)
                await asyncio.to_thread(w2.wait, 5)
                await sub.wait_for(lambda: last("emomon/status/w2") == b"offline", timeout_s=5)
                await sub.wait_for(lambda: last("emomon/status") == b"offline", timeout_s=5)
            finally:
                for w in (w1, w2):
                    w.kill()
                    w.wait()

    asyncio.run(main())


def test_retained_states_are_published_again_after_a_broker_lost_them(tmp_path: Path) -> None:
    """A broker without persistence crashes and comes back empty: the sink puts every speaker's
    latest state back without waiting for that speaker to talk again."""
    broker = Mosquitto(tmp_path / "broker")  # no persistence: a restart forgets retained messages
    broker.start()

    async def main() -> None:
        sink = MqttSink(MqttSettings(url=broker.url, client_id="w"), reconnect=FAST)
        await sink.start()
        for i, (spk, label) in enumerate([("alice", "joy"), ("bob", "anger"), ("alice", "fear")]):
            await sink.publish(make_event("call-1", spk, i, label))
        latest = {"emomon/call-1/alice/state": "fear", "emomon/call-1/bob/state": "anger"}

        def states_seen(sub: Collector) -> dict[str, str]:
            return {t: json.loads(p)["label"] for t, p, _ in sub.messages}

        async with Collector(broker.port, "emomon/+/+/state") as sub:
            # 3 live or 2 retained messages, depending on when the subscription began
            await sub.wait_for(lambda: states_seen(sub) == latest, timeout_s=15)
        broker.stop(signal.SIGKILL)
        await asyncio.to_thread(broker.start)
        async with Collector(broker.port, "emomon/+/+/state") as sub:  # a dashboard arriving now
            await sub.wait_for(lambda: len(sub.messages) >= 2, timeout_s=15)
            await asyncio.sleep(0.3)
            states = states_seen(sub)
        assert states == latest
        for _ in range(100):  # counted when the broker acknowledged them
            if sink.counters["states_republished"] == 2:
                break
            await asyncio.sleep(0.05)
        assert sink.counters["states_republished"] == 2
        assert sink.counters["reconnects"] >= 1
        await sink.close()

    try:
        asyncio.run(main())
    finally:
        broker.stop(signal.SIGKILL)


def test_a_crash_of_the_connection_task_restarts_it_and_health_says_so(
    mosquitto: Mosquitto,
) -> None:
    """The bug of issue 18 (``speaker: 12345`` reaching the sink) killed the task for good and
    every later event was refused. Now the task restarts, the event that crashed it twice is
    dropped and counted, health is 503 meanwhile and the next valid event goes out."""

    async def main() -> None:
        sink = MqttSink(
            MqttSettings(url=mosquitto.url, client_id="w"),
            reconnect=ReconnectPolicy(initial_delay_s=0.6, max_delay_s=0.6, jitter=0.0),
        )
        await sink.start()
        assert sink.health()[0]
        poison = make_event("call-1", "alice", 0)
        object.__setattr__(poison, "speaker", 12345)  # what a wire decoder bug would let through
        async with Collector(mosquitto.port, "emomon/+/+/emotion") as sub:
            await sink.publish(poison)
            await asyncio.sleep(0.3)
            ok, detail = sink.health()
            assert not ok and "TypeError" in detail["reason"] and detail["crashes"] == 1
            await sink.publish(make_event("call-1", "bob", 1))  # accepted while restarting
            await sub.wait_for(lambda: len(sub.messages) == 1, timeout_s=10)
        assert json.loads(sub.messages[0][1])["speaker"] == "bob"
        # The subscriber can see the message before the sink has had the broker's PUBACK
        # (QoS 1), which is when it counts the event as sent: wait for that, not a fixed time.
        for _ in range(100):
            c = sink.counters
            if c["sent"] == 1 and c["pending"] == 0:
                break
            await asyncio.sleep(0.05)
        assert (c["crashes"], c["poisoned"], c["sent"], c["pending"]) == (2, 1, 1, 0)
        assert sink.health()[0]
        await sink.close()

    asyncio.run(main())


def test_wrong_password_while_waiting_for_the_broker_is_unhealthy(tmp_path: Path) -> None:
    pw = make_password_file(tmp_path / "passwd", "emo", "right")
    broker = Mosquitto(tmp_path / "broker", password_file=pw)
    broker.start()

    async def main() -> None:
        sink = MqttSink(
            MqttSettings(url=f"mqtt://emo:wrong@127.0.0.1:{broker.port}", wait_for_broker=True),
            reconnect=FAST,
        )
        await sink.start()
        for _ in range(100):
            if not sink.health()[0]:
                break
            await asyncio.sleep(0.05)
        ok, detail = sink.health()
        assert not ok and "password" in detail["reason"] and "wrong" not in detail["reason"]
        await sink.close()

    try:
        asyncio.run(main())
    finally:
        broker.stop(signal.SIGKILL)
