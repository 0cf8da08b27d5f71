"""A health check that raises is answered 503 with the reason, not a dropped connection."""

from __future__ import annotations

import asyncio
import json

from emomon.services.metrics import Metrics, MetricsServer
from tests.unit.test_metrics_auth import _get


def test_a_health_check_that_raises_is_a_503_with_its_reason() -> None:
    def broken() -> tuple[bool, dict]:
        raise RuntimeError("sink health() bug")

    async def probe() -> tuple[bool, dict]:
        raise KeyError("redis")

    async def main() -> None:
        for check, says in ((broken, "RuntimeError: sink health() bug"), (probe, "KeyError")):
            server = MetricsServer(Metrics(), check, port=0)
            port = await server.start()
            try:
                code, _, body = await _get(port, "/healthz")
                assert code == 503
                detail = json.loads(body)
                assert detail["status"] == "unhealthy" and says in detail["reasons"][0]
                assert (await _get(port, "/metrics"))[0] == 200  # the server goes on
            finally:
                await server.close()

    asyncio.run(main())
