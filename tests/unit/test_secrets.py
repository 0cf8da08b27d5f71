"""A password given in a Redis or MQTT URL never shows up in what emomon prints or logs, while the
clients still receive it (issue #18, item 6)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys

import pytest

from emomon.services.commands.common import setup_logging
from emomon.services.metrics import Metrics
from emomon.services.publish.base import SinkError
from emomon.services.publish.mqtt import MqttSink, parse_mqtt_url
from emomon.services.queue.redis import RedisProducer, connect
from emomon.services.queue.redis.client import RedisQueueError
from emomon.services.redact import RedactingFilter, redact_url
from emomon.services.settings import MqttSettings, RedisSettings, SettingsError, load_settings
from tests.helpers.factories import utterance

SECRET = "Pl4ntedS3cret"


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _emomon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EMOMON_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "emomon.services", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://emo:LeakPw1@host:6379/0", "redis://emo:***@host:6379/0"),
        ("mqtts://u:p%40ss@broker:8883", "mqtts://u:***@broker:8883"),
        ("redis://:onlypw@h/0", "redis://:***@h/0"),
        ("rediss://u:a:b@c@host:1/0", "rediss://u:***@host:1/0"),  # ':' and '@' in the password
        (
            "invalid Redis URL 'redis://e:x@h:notaport/0': bad",
            "invalid Redis URL 'redis://e:***@h:notaport/0': bad",
        ),
        ("redis://user@host:6379", "redis://user@host:6379"),  # no password: unchanged
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("no url here", "no url here"),
    ],
)
def test_redact_url_masks_only_the_password(text: str, shown: str) -> None:
    assert redact_url(text) == shown


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (
            [
                "--set",
                f"redis.url=redis://emo:{SECRET}@127.0.0.1:6379/0",
                "--set",
                f"mqtt.url=mqtt://emo:{SECRET}@127.0.0.1:1883",
            ],
            {},
        ),
        (
            [],
            {
                "EMOMON_REDIS__URL": f"redis://emo:{SECRET}@127.0.0.1:6379/0",
                "EMOMON_MQTT__URL": f"mqtts://emo:{SECRET}@broker:8883",
            },
        ),
    ],
    ids=["flags", "environment"],
)
def test_config_show_masks_passwords(args: list[str], env: dict[str, str]) -> None:
    r = _emomon("config", "show", *args, env=env)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    assert "redis://emo:***@127.0.0.1:6379/0" in r.stdout
    assert "://emo:***@" in r.stdout.split('"mqtt"', 1)[1]


def test_bad_redis_url_error_masks_the_password() -> None:
    r = _emomon("worker", "--redis-url", f"redis://emo:{SECRET}@127.0.0.1:notaport/0")
    assert r.returncode == 2
    assert "invalid Redis URL" in r.stderr
    assert SECRET not in r.stdout + r.stderr


def test_bad_mqtt_url_error_masks_the_password() -> None:
    r = _emomon("config", "show", env={"EMOMON_MQTT__URL": f"http://emo:{SECRET}@127.0.0.1:1883"})
    assert r.returncode == 2
    assert "mqtt.url" in r.stderr
    assert SECRET not in r.stdout + r.stderr


def test_url_errors_raised_in_process_mask_the_password() -> None:
    with pytest.raises(SinkError) as sink_error:
        parse_mqtt_url(f"mqtt://emo:{SECRET}@host:99999")
    with pytest.raises(RedisQueueError) as redis_error:
        connect(f"redis://emo:{SECRET}@host:notaport/0")
    with pytest.raises(SettingsError) as settings_error:
        load_settings(overrides={"mqtt": {"url": f"tcp://emo:{SECRET}@h"}}, environ={})
    for e in (sink_error.value, redis_error.value, settings_error.value):
        assert SECRET not in str(e)
        assert "***" in str(e)


def test_clients_still_get_the_password() -> None:
    settings = load_settings(
        environ={
            "EMOMON_REDIS__URL": f"redis://emo:{SECRET}@127.0.0.1:6379/0",
            "EMOMON_MQTT__URL": f"mqtt://emo:{SECRET}@127.0.0.1:1883",
        }
    )
    address = parse_mqtt_url(settings.mqtt.url or "")
    assert (address.username, address.password) == ("emo", SECRET)
    assert SECRET not in repr(address) + address.display
    client = connect(settings.redis.url)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("emo", SECRET)
    asyncio.run(client.aclose())


def test_failed_connections_log_no_password(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        sink = MqttSink(MqttSettings(url=f"mqtt://emo:{SECRET}@127.0.0.1:{port}"))
        with pytest.raises(SinkError) as refused:
            await sink.start()
        logging.getLogger("emomon.test").error("%s", refused.value)

        url = f"redis://emo:{SECRET}@127.0.0.1:{port}/0"
        producer = RedisProducer(connect(url), RedisSettings(url=url), Metrics())
        producer.offer(utterance())
        producer.start()
        for _ in range(100):  # the first failed XADD is logged at once, then it backs off
            await asyncio.sleep(0.02)
            if producer.failures:
                break
        await producer.close(drain_timeout_s=0)

    asyncio.run(main())
    assert str(port) in caplog.text  # the attempts were logged ...
    assert SECRET not in caplog.text  # ... without the password


def test_log_handlers_mask_urls_any_library_logs(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    for handler in before:
        root.removeHandler(handler)
    try:
        setup_logging("INFO")
        assert all(any(isinstance(f, RedactingFilter) for f in h.filters) for h in root.handlers)
        logging.getLogger("some.library").warning("cannot reach %s", f"redis://emo:{SECRET}@h/0")
        err = capsys.readouterr().err
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)
    assert "redis://emo:***@h/0" in err
    assert SECRET not in err
