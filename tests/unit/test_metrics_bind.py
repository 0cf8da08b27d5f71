"""The metrics/health endpoint listens on loopback unless told otherwise (issue #18, item 7)."""

from __future__ import annotations

import asyncio

import pytest

from emomon.services.cli import build_parser
from emomon.services.commands.common import settings_from_args
from emomon.services.commands.flags import METRICS, overrides
from emomon.services.metrics import Metrics, MetricsServer
from emomon.services.settings import Settings


def test_default_binds_loopback_only() -> None:
    assert Settings().metrics.host == "127.0.0.1"

    async def main() -> tuple[str, int]:
        server = MetricsServer(Metrics(), lambda: (True, {}), port=0)
        port = await server.start()
        try:
            assert server._server is not None
            host, bound = server._server.sockets[0].getsockname()[:2]
            # and it answers there
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (await r.read()).startswith(b"HTTP/1.1 200")
            w.close()
            return host, bound
        finally:
            await server.close()

    host, bound = asyncio.run(main())
    assert host == "127.0.0.1"
    assert bound > 0


@pytest.mark.parametrize("argv", [["stream", "call.wav"], ["worker"]])
def test_metrics_host_flag_reaches_the_settings(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--metrics-host", "0.0.0.0", "--metrics-port", "0"])
    settings = settings_from_args(args, overrides(args, METRICS))
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 0)
