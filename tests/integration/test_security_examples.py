"""The example configurations of docs/SECURITY.md work as written (issue #18, item 7).

Each test starts the real server with the example file from docs/examples/ (only its paths and
port replaced by temporary ones, and certificates made for the test) and runs emomon's own
clients against it: Redis with TLS and ACL users, Mosquitto with a TLS listener, a password
file and a topic ACL.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mosquitto_helpers import MOSQUITTO, _listening, make_event, make_password_file, make_tls_files
from redis.exceptions import NoPermissionError
from redis_helpers import (
    REDIS_SERVER,
    ListSink,
    classifier_or_skip,
    free_port,
    synthetic_utterance,
)

from emomon.services.context import RedisContextStore
from emomon.services.health import RedisProbe
from emomon.services.publish.base import SinkError
from emomon.services.publish.mqtt import MqttSink, ReconnectPolicy
from emomon.services.queue.redis import RedisProducer, RedisStreamWorker, connect
from emomon.services.settings import MqttSettings, RedisSettings, WorkerSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _render(text: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        assert old in text, f"the example no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def _redis_url(user: str, password: str, port: int, ca: Path, scheme: str = "rediss") -> str:
    return f"{scheme}://{user}:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"


def test_redis_example_tls_and_acl_users(tmp_path: Path) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    classifier = classifier_or_skip()
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    acl = tmp_path / "users.acl"
    shutil.copy(EXAMPLES / "redis" / "users.acl", acl)
    conf = tmp_path / "redis.conf"
    conf.write_text(
        _render(
            (EXAMPLES / "redis" / "redis.conf").read_text(),
            {
                "tls-port 6380": f"tls-port {port}",
                "/etc/redis/tls/server.pem": str(tls.server_cert),
                "/etc/redis/tls/server.key": str(tls.server_key),
                "/etc/redis/tls/ca.pem": str(tls.ca),
                "/etc/redis/users.acl": str(acl),
            },
        )
    )
    proc = subprocess.Popen(
        [REDIS_SERVER, str(conf), "--dir", str(tmp_path)],
        stdout=open(tmp_path / "redis.log", "wb"),  # noqa: SIM115 - owned by the process
        stderr=subprocess.STDOUT,
    )
    stream_url = _redis_url("emomon-stream", "CHANGE-ME-stream-password", port, tls.ca)
    worker_url = _redis_url("emomon-worker", "CHANGE-ME-worker-password", port, tls.ca)

    async def main() -> None:
        probe = RedisProbe.for_url(worker_url)
        deadline = time.monotonic() + 10
        while (status := await probe.check()).state != "up":
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()[-1000:]
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)

        # The streamer's user writes utterances (and a garbage entry) and may read nothing.
        stream_client = connect(stream_url)
        producer = RedisProducer(stream_client, RedisSettings(url=stream_url))
        producer.start()
        utts = [synthetic_utterance(i, session="sec") for i in range(3)]
        for u in utts:
            producer.offer(u)
        assert await producer.flush(10.0)
        await stream_client.xadd("emomon:utterances", {"v": "1", "u": b"garbage"})
        with pytest.raises(NoPermissionError):
            await stream_client.xrange("emomon:utterances")
        await producer.close(1.0)

        # The worker's user runs everything a worker does: group, reads, janitor, heartbeat
        # script, context store, acks and the dead-letter transaction.
        client = connect(worker_url)
        sink = ListSink()
        worker = RedisStreamWorker(
            client,
            RedisSettings(url=worker_url),
            WorkerSettings(device="cpu", max_batch=8, max_wait_ms=20),
            classifier,
            [sink],
            consumer="w",
            context=RedisContextStore(client, ttl_s=60),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(60):
            while len(sink.events) < 3 or worker.dead_lettered < 1:
                assert not task.done(), task
                await asyncio.sleep(0.05)
        stop.set()
        await task
        # The heartbeat script (EVALSHA, and XPENDING + XCLAIM inside it) under this ACL user.
        await stream_client.xadd("emomon:utterances", {"v": "1", "u": b"x"})
        rows = await client.xreadgroup("emomon-workers", "probe", {"emomon:utterances": ">"})
        held = [eid for _, items in rows for eid, _ in items]
        worker.heartbeat.consumer = "probe"
        worker.heartbeat.hold(held)
        assert await worker.heartbeat.beat() == len(held) == 1
        assert worker.auth_error is None
        assert [e.utterance_id for e in sink.events] == [u.utterance_id for u in utts]
        assert len(await RedisContextStore(client, ttl_s=60).recent("sec")) == 3

        # TLS only, and the right password only.
        plain = RedisProbe.for_url(worker_url.replace("rediss://", "redis://").split("?")[0])
        assert (await plain.check()).state == "down"
        wrong = RedisProbe.for_url(worker_url.replace("CHANGE-ME-worker", "wrong"))
        assert (await wrong.check()).state == "auth-failed"
        for c in (plain, wrong, probe):
            await c.aclose()
        await client.aclose()
        await stream_client.aclose()

    try:
        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(10)


def _tls_client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def test_mosquitto_example_tls_password_file_and_acl(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    passwd = make_password_file(tmp_path / "passwd", "emomon", "sink-pw")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "dashboard", "dash-pw"], check=True)
    acl = tmp_path / "acl"
    shutil.copy(EXAMPLES / "mosquitto" / "acl", acl)
    (tmp_path / "db").mkdir()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        _render(
            (EXAMPLES / "mosquitto" / "mosquitto.conf").read_text(),
            {
                "listener 8883": f"listener {port} 127.0.0.1",
                "/etc/mosquitto/tls/ca.pem": str(tls.ca),
                "/etc/mosquitto/tls/server.pem": str(tls.server_cert),
                "/etc/mosquitto/tls/server.key": str(tls.server_key),
                "/etc/mosquitto/passwd": str(passwd),
                "/etc/mosquitto/acl": str(acl),
                "/var/lib/mosquitto/": f"{tmp_path / 'db'}/",
            },
        )
        # started as root, mosquitto would switch to user "mosquitto" and not read tmp_path
        + f"user {getpass.getuser()}\n"
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "mosquitto.log", "wb"),  # noqa: SIM115 - owned by the process
    )

    async def main() -> None:
        deadline = time.monotonic() + 5
        while not _listening(port):
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()[-1000:]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        got: list[tuple[str, Any]] = []
        ready = asyncio.Event()

        async def dashboard() -> None:
            async with aiomqtt.Client(
                "127.0.0.1",
                port,
                username="dashboard",
                password="dash-pw",
                tls_context=_tls_client_context(tls.ca),
            ) as c:
                await c.subscribe("emomon/call-1/#", qos=1)
                ready.set()
                async for m in c.messages:
                    got.append((str(m.topic), m.payload))
                    if len(got) == 1:  # a dashboard may not write: the broker drops this
                        await c.publish("emomon/call-1/alice/state", "forged", qos=1)

        reader = asyncio.create_task(dashboard())
        await asyncio.wait_for(ready.wait(), 5)
        settings = dict(ca_file=str(tls.ca), client_id="sec")
        sink = MqttSink(
            MqttSettings(url=f"mqtts://emomon:sink-pw@127.0.0.1:{port}", **settings),
            reconnect=ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.5),
        )
        await sink.start()
        await sink.publish(make_event("call-1", "alice", 0))
        async with asyncio.timeout(5):
            while len(got) < 3:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert sink.health()[0]
        await sink.close()
        payloads = [p for _, p in got]
        assert b"forged" not in payloads
        assert sorted(t for t, _ in got) == [
            "emomon/call-1/alice/emotion",
            "emomon/call-1/alice/state",
            "emomon/call-1/events",
        ]
        assert json.loads(payloads[0])["speaker"] == "alice"

        with pytest.raises(SinkError) as err:  # no password: refused
            await MqttSink(MqttSettings(url=f"mqtts://127.0.0.1:{port}", **settings)).start()
        assert "refused" in str(err.value)
        with pytest.raises(SinkError):  # plain MQTT to the TLS listener: no
            await MqttSink(MqttSettings(url=f"mqtt://emomon:sink-pw@127.0.0.1:{port}")).start()

    try:
        asyncio.run(main())
    finally:
        proc.kill()
        proc.wait(10)
