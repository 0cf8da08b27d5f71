"""The trend/alert publisher forgets speakers it has not heard for long (bounded like Insights),
so a long-running worker neither grows nor re-announces every speaker ever seen on reconnect."""

from __future__ import annotations

import asyncio

from emomon.services.insights import MAX_SPEAKERS, InsightUpdate
from emomon.services.publish.mqtt.insights import MqttInsightPublisher
from emomon.services.settings import MqttSettings


def test_speakers_for_discovery_are_bounded_least_recently_heard_first():
    pub = MqttInsightPublisher(MqttSettings(url="mqtt://127.0.0.1:1"), ("r",))

    async def main() -> None:
        for i in range(MAX_SPEAKERS + 10):
            await pub.insight({"session": f"s{i}", "speaker": "A"}, InsightUpdate())
            await pub.insight({"session": "s0", "speaker": "A"}, InsightUpdate())  # kept in use
        pub._announced.add(
            ("s11", "A")
        )  # the oldest left: announced, then forgotten with its speaker
        await pub.insight({"session": "new", "speaker": "A"}, InsightUpdate())

    asyncio.run(main())
    assert len(pub._speakers) == MAX_SPEAKERS
    assert ("s0", "A") in pub._speakers and ("new", "A") in pub._speakers
    assert ("s1", "A") not in pub._speakers
    assert ("s11", "A") not in pub._speakers and ("s11", "A") not in pub._announced
