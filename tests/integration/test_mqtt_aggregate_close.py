"""Two instances that exit cleanly at the same moment leave the aggregate status ``offline``
(each used to skip it because it still saw the other online), against a real Mosquitto."""

from __future__ import annotations

import asyncio

import pytest
from mosquitto_helpers import Collector, Mosquitto, mosquitto

from emomon.services.publish.mqtt import MqttSink
from emomon.services.settings import MqttSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
__all__ = ["mosquitto"]  # the fixture, imported for pytest


async def _retained(port: int, topic: str) -> bytes | None:
    async with Collector(port, topic) as sub:
        await asyncio.sleep(0.5)
    got = [p for t, p, retained in sub.messages if t == topic and retained]
    return got[-1] if got else None


@pytest.mark.parametrize("together", [True, False])
def test_the_last_clean_exit_leaves_the_aggregate_offline(mosquitto: Mosquitto, together) -> None:
    async def main() -> tuple[bytes | None, bytes | None]:
        sinks = [MqttSink(MqttSettings(url=mosquitto.url, client_id=f"w{i}")) for i in (1, 2)]
        for s in sinks:
            await s.start()
        for _ in range(100):  # each has seen the other's retained 'online'
            if all(s.upkeep.presence.others_online() for s in sinks):
                break
            await asyncio.sleep(0.05)
        assert all(s.upkeep.presence.others_online() for s in sinks)
        if together:
            await asyncio.gather(*(s.close() for s in sinks))
            middle = None
        else:
            await sinks[0].close()
            await asyncio.sleep(0.5)  # the survivor puts 'online' back
            middle = await _retained(mosquitto.port, "emomon/status")
            await sinks[1].close()
        return middle, await _retained(mosquitto.port, "emomon/status")

    middle, end = asyncio.run(main())
    assert middle in (None, b"online")
    assert end == b"offline"
