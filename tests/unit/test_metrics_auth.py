"""The metrics/health endpoint's optional bearer token and async health checks (issue #18)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from emomon.services.cli import build_parser
from emomon.services.commands.common import settings_from_args
from emomon.services.commands.flags import METRICS, overrides
from emomon.services.health import Health
from emomon.services.metrics import Metrics, MetricsServer, metrics_server
from emomon.services.settings import load_settings

TOKEN = "T0kenPlanted-7f3a"


async def _get(port: int, path: str, headers: str = "") -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def test_token_required_on_both_paths_when_set() -> None:
    async def main() -> None:
        server = MetricsServer(Metrics(), lambda: (True, {}), port=0, token=TOKEN)
        port = await server.start()
        try:
            for path in ("/metrics", "/healthz"):
                code, head, body = await _get(port, path)
                assert code == 401 and b"WWW-Authenticate: Bearer" in head
                assert TOKEN.encode() not in body
                assert (await _get(port, path, "Authorization: Bearer nope\r\n"))[0] == 401
                assert (await _get(port, path, f"Authorization: Basic {TOKEN}\r\n"))[0] == 401
                code, _, _ = await _get(port, path, f"authorization: bearer {TOKEN}\r\n")
                assert code == 200
        finally:
            await server.close()

    asyncio.run(main())


def test_no_token_no_auth() -> None:
    async def main() -> None:
        server = MetricsServer(Metrics(), lambda: (True, {}), port=0)
        port = await server.start()
        try:
            assert (await _get(port, "/healthz"))[0] == 200
        finally:
            await server.close()

    asyncio.run(main())


def test_async_health_with_reasons_and_a_slow_one_is_cut_off() -> None:
    async def unhealthy() -> tuple[bool, dict[str, Any]]:
        return False, {"reasons": ["sink mqtt: stopped"]}

    async def slow() -> tuple[bool, dict[str, Any]]:
        await asyncio.sleep(5)
        return True, {}

    async def main() -> None:
        health = Health(lambda: (True, {"consumer": "w"}), sinks=[_Sink(False)])
        for check, code, want in (
            (unhealthy, 503, ["sink mqtt: stopped"]),
            (health, 503, ["sink fake: broken"]),
        ):
            server = MetricsServer(Metrics(), check, port=0)
            port = await server.start()
            try:
                got, _, body = await _get(port, "/healthz")
                assert got == code and json.loads(body)["reasons"] == want
            finally:
                await server.close()
        server = MetricsServer(Metrics(), slow, port=0, health_timeout_s=0.2)
        port = await server.start()
        try:
            got, _, body = await _get(port, "/healthz")
            assert got == 503 and "took over" in json.loads(body)["reasons"][0]
        finally:
            await server.close()

    asyncio.run(main())


class _Sink:
    name = "fake"

    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.ok, {} if self.ok else {"reason": "broken"}


def test_token_from_flag_env_and_masked_in_config_show() -> None:
    args = build_parser().parse_args(["worker", "--metrics-port", "0", "--metrics-token", TOKEN])
    settings = settings_from_args(args, overrides(args, METRICS))
    server = metrics_server(settings, Metrics(), lambda: (True, {}))
    assert server is not None and server.token == TOKEN and TOKEN not in repr(server)
    assert load_settings(environ={"EMOMON_METRICS__TOKEN": TOKEN}).metrics.token is not None
    assert metrics_server(load_settings(environ={}), Metrics(), lambda: (True, {})) is None

    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOMON_")}
    out = subprocess.run(
        [sys.executable, "-m", "emomon.services", "config", "show"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "EMOMON_METRICS__TOKEN": TOKEN},
    )
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout + out.stderr and "**" in out.stdout


def test_a_sink_whose_publish_fails_makes_health_unhealthy_until_it_works(tmp_path: Any) -> None:
    """A JSONL sink on a full disk (/dev/full: every write fails with ENOSPC) has no health()
    of its own; the delivery stage's record of its failure makes /healthz 503."""
    from pathlib import Path

    from emomon.services.delivery import Delivery
    from emomon.services.publish.jsonl import JsonlSink
    from tests.helpers.factories import event

    if not Path("/dev/full").exists():
        import pytest

        pytest.skip("no /dev/full here")

    class _Classifier:
        async def classify(self, utts: Any) -> list[Any]:
            return [event(u.utterance_id, u.end_s) for u in utts]

    async def main() -> None:
        from tests.helpers.factories import utterance

        full = JsonlSink("/dev/full")
        delivery = Delivery(_Classifier(), [full])
        health = Health(lambda: (True, {}), sinks=[full], sink_errors=lambda: delivery.sink_errors)
        await full.start()
        result = await delivery.deliver([utterance()])
        assert not result.delivered
        ok, detail = await health()
        assert not ok and detail["reasons"][0].startswith("sink jsonl: publish failing")
        assert "No space left" in detail["reasons"][0] and detail["sinks"]["jsonl"]["ok"] is False
        full.path = tmp_path / "fixed.jsonl"  # the disk has room again
        full._f = None
        assert (await delivery.deliver([utterance()])).delivered
        assert (await health())[0]

    asyncio.run(main())
