"""``/healthz`` of a fusion worker against real servers: it turns 503 when Redis is down, when
the password is wrong, and when a sink can no longer deliver; poison entries are dead-lettered
and the next valid utterance still reaches MQTT (issue #18, items 1 and 2)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from mosquitto_helpers import Collector, Mosquitto, make_password_file
from redis_helpers import RedisServer, classifier_or_skip, synthetic_utterance, with_header

from emomon.services.context import RedisContextStore
from emomon.services.health import Health, RedisProbe
from emomon.services.metrics import Metrics, MetricsServer
from emomon.services.publish.mqtt import MqttSink, ReconnectPolicy
from emomon.services.queue import wire
from emomon.services.queue.redis import RedisStreamWorker, connect
from emomon.services.settings import MqttSettings, RedisSettings, WorkerSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORD = "R1ghtPw"
WRONG = "Wr0ngPw"
# An ACL user for emomon; the default user is off, so nothing works without credentials.
ACL = ["--user", "default", "off", "--user", "emo", "on", f">{PASSWORD}", "~*", "&*", "+@all"]


@pytest.fixture(scope="module")
def classifier() -> Any:
    return classifier_or_skip()


def _url(server: RedisServer, password: str) -> str:
    return f"redis://emo:{password}@127.0.0.1:{server.port}/0"


async def _get(port: int, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


class Served:
    """A worker with its health endpoint, as ``emomon worker --metrics-port`` wires them."""

    def __init__(self, url: str, classifier: Any, sinks: list[Any], stream: str) -> None:
        self.client = connect(url, command_retries=1)
        self.settings = RedisSettings(url=url, stream=stream, dead_letter_stream=f"{stream}:dead")
        self.worker = RedisStreamWorker(
            self.client,
            self.settings,
            WorkerSettings(device="cpu", max_batch=8, max_wait_ms=50),
            classifier,
            sinks,
            consumer="w",
            context=RedisContextStore(self.client, ttl_s=60),
        )
        self.probe = RedisProbe.for_url(url)
        health = Health(
            self.worker.health, self.probe, sinks, auth_error=lambda: self.worker.auth_error
        )
        self.server = MetricsServer(Metrics(), health, port=0)
        self.stop = asyncio.Event()
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Served:
        self.port = await self.server.start()
        self._task = asyncio.create_task(self.worker.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 20)
        await self.server.close()
        await self.probe.aclose()
        await self.client.aclose()

    async def until(self, status: int, timeout_s: float = 10.0) -> dict[str, Any]:
        """Poll /healthz until it answers ``status``; return its JSON."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            code, body = await _get(self.port)
            if code == status:
                return body
            if loop.time() > deadline:
                raise AssertionError(f"/healthz stayed {code}: {body}")
            await asyncio.sleep(0.1)


def test_healthz_is_503_with_a_wrong_password_and_while_redis_is_down(classifier: Any) -> None:
    server = RedisServer(extra=ACL, ping_auth=("emo", PASSWORD)).start()

    async def main() -> None:
        async with Served(_url(server, WRONG), classifier, [], "t:auth") as bad:
            body = await bad.until(503)
            assert body["redis"] == "auth-failed"
            assert any(
                "refused the credentials" in r and "--redis-url" in r for r in body["reasons"]
            )
            assert WRONG not in json.dumps(body)
            for _ in range(100):  # the worker task records it on its own schedule
                if bad.worker.auth_error:
                    break
                await asyncio.sleep(0.1)
            assert bad.worker.auth_error and "username-password" in bad.worker.auth_error

        async with Served(_url(server, PASSWORD), classifier, [], "t:auth") as good:
            body = await good.until(200)
            assert body["redis"] == "up" and body["consumer"] == "w"
            await asyncio.to_thread(server.stop)
            body = await good.until(503, timeout_s=5)  # probed now, not the last round trip
            assert body["redis"] == "down"
            assert any("Redis unreachable" in r for r in body["reasons"])
            await asyncio.to_thread(server.start)
            await good.until(200, timeout_s=15)

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_poison_entries_dead_lettered_next_utterance_on_mqtt_then_sink_refused(
    classifier: Any, tmp_path: Path
) -> None:
    """``speaker: 12345`` and ``session: 12345`` go to dead letters; the valid utterance of the
    same batch is published on MQTT; a broker that later refuses our password makes the
    worker's /healthz 503, naming the sink, and the worker takes no entries until the sink
    delivers again."""
    server = RedisServer().start()
    pw = make_password_file(tmp_path / "passwd", "emo", "mqttpw")
    broker = Mosquitto(tmp_path / "broker", password_file=pw)
    broker.start()

    async def main() -> None:
        sink = MqttSink(
            MqttSettings(url=f"mqtt://emo:mqttpw@127.0.0.1:{broker.port}", client_id="w"),
            reconnect=ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.5),
        )
        await sink.start()
        async with (
            Served(server.url, classifier, [sink], "t:poison-mqtt") as served,
            Collector(broker.port, "emomon/+/+/emotion", auth=("emo", "mqttpw")) as sub,
        ):
            await served.until(200)
            good = synthetic_utterance(7, session="poison")
            r = served.client
            stream = served.settings.stream
            await r.xadd(stream, with_header(synthetic_utterance(1), speaker=12345))
            await r.xadd(stream, with_header(synthetic_utterance(2), session=12345))
            await r.xadd(stream, wire.encode(good))
            await sub.wait_for(lambda: len(sub.messages) >= 1, timeout_s=30)
            assert [json.loads(p)["utterance_id"] for _, p, _ in sub.messages] == [
                good.utterance_id
            ]
            dead = await r.xrange(served.settings.dead_letter_stream)
            assert [f[b"reason"] for _, f in dead] == [b"bad-payload"] * 2
            body = await served.until(200)
            assert body["sinks"]["mqtt"]["ok"] and body["sinks"]["mqtt"]["connected"]

            # The broker comes back with another password for our user: the sink cannot deliver.
            broker.stop(signal.SIGKILL)
            make_password_file(pw, "emo", "rotated")
            await asyncio.to_thread(broker.start)
            body = await served.until(503, timeout_s=15)
            assert any(r.startswith("sink mqtt:") and "password" in r for r in body["reasons"])
            assert "mqttpw" not in json.dumps(body)
            # The worker takes nothing while its sink cannot deliver: the entry stays unread in
            # the stream for a healthy worker, no delivery is burnt on it.
            async with asyncio.timeout(5):  # noticed between two reads (<= 0.5 s apart)
                while served.worker.paused is None:
                    await asyncio.sleep(0.05)
            assert served.worker.paused.startswith("sink mqtt:")
            later = synthetic_utterance(8, session="poison")
            await r.xadd(stream, wire.encode(later))
            await asyncio.sleep(2.0)
            (group,) = await r.xinfo_groups(stream)
            assert int(group["lag"]) == 1 and int(group["pending"]) == 0

            # The password is restored: the sink reconnects, the worker takes the entry again.
            broker.stop(signal.SIGKILL)
            make_password_file(pw, "emo", "mqttpw")
            await asyncio.to_thread(broker.start)
            body = await served.until(200, timeout_s=15)
            # The collector (clean session) may re-subscribe after the worker has already
            # published it: the speaker's retained state says so either way.
            got: list[str] = []
            deadline = asyncio.get_running_loop().time() + 30
            while later.utterance_id not in got:
                assert asyncio.get_running_loop().time() < deadline, got
                async with Collector(
                    broker.port, "emomon/poison/+/state", auth=("emo", "mqttpw")
                ) as state:
                    await asyncio.sleep(1.0)
                    got = [json.loads(p)["utterance_id"] for _, p, _ in state.messages]
        await sink.close()

    try:
        asyncio.run(main())
    finally:
        broker.stop(signal.SIGKILL)
        server.stop()
