"""The streamer's producer against a real ``redis-server`` that is stopped and restarted on the same port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis_helpers import RedisServer, synthetic_utterance

from emomon.services.metrics import Metrics
from emomon.services.queue import wire
from emomon.services.queue.redis import RedisProducer, connect
from emomon.services.settings import RedisSettings

pytestmark = [pytest.mark.integration]


async def _outage(
    server: RedisServer, buffer_size: int, before: int, during: int, down_s: float
) -> tuple[list[str], list[str], RedisProducer, float]:
    """Produce ``before`` utterances, stop Redis, produce ``during`` more, restart; return ids sent/stored."""
    settings = RedisSettings(url=server.url, stream="t:prod", buffer_size=buffer_size)
    metrics = Metrics()
    producer = RedisProducer(connect(server.url), settings, metrics)
    producer.start()
    utts = [synthetic_utterance(i, seconds=0.2) for i in range(before + during)]
    for u in utts[:before]:
        producer.offer(u)
    assert await producer.flush(5.0)
    await asyncio.to_thread(server.stop)
    worst_offer = 0.0
    for u in utts[before:]:
        t0 = time.perf_counter()
        producer.offer(u)  # capture must never wait on Redis
        worst_offer = max(worst_offer, time.perf_counter() - t0)
        await asyncio.sleep(down_s / during)
    assert producer.failures > 0, "the producer never noticed that Redis was gone"
    await asyncio.to_thread(server.start)  # same port, same data directory
    assert await producer.flush(15.0), f"buffer did not drain: {producer.health()}"
    await producer.close(1.0)
    reader = connect(server.url)
    stored = [wire.decode(f).utterance_id for _, f in await reader.xrange(settings.stream)]
    await reader.aclose()
    await producer._r.aclose()
    return [u.utterance_id for u in utts], stored, producer, worst_offer


def test_producer_reconnects_and_loses_nothing_that_fit_in_its_buffer(tmp_path: Path) -> None:
    server = RedisServer(
        data_dir=tmp_path
    ).start()  # AOF on: what was written before the outage survives it
    try:
        sent, stored, producer, worst_offer = asyncio.run(
            _outage(server, buffer_size=100, before=20, during=40, down_s=2.0)
        )
    finally:
        server.stop()
    assert stored == sent  # every utterance, once, in order
    assert producer.dropped == 0 and producer.buffered == 0
    # offer() never waits on Redis (a wait would last the 2 s outage); the bound leaves room for
    # a garbage-collection pass or a preemption on a loaded 2-core machine
    assert worst_offer < 0.25
    assert producer.metrics.redis_errors.labels(op="xadd")._value.get() >= 1


def test_producer_drops_the_oldest_when_the_outage_outgrows_its_buffer(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path).start()
    try:
        sent, stored, producer, _ = asyncio.run(
            _outage(server, buffer_size=15, before=5, during=40, down_s=1.0)
        )
    finally:
        server.stop()
    assert stored == sent[:5] + sent[-15:]  # the newest 15 of the outage, in order
    assert producer.dropped == 25
    assert producer.metrics.dropped.labels(reason="buffer_full")._value.get() == 25
