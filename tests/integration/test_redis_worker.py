"""Fusion workers on a real ``redis-server``: load sharing, dead letters, context (in-process workers)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest
from redis_helpers import (  # noqa: F401 - redis_server_fixture provides redis_server
    ListSink,
    RedisServer,
    classifier_or_skip,
    redis_server_fixture,
    synthetic_utterance,
    with_header,
)

from emomon.services.context import RedisContextStore
from emomon.services.metrics import Metrics
from emomon.services.queue import wire
from emomon.services.queue.redis import RedisStreamWorker, connect
from emomon.services.settings import RedisSettings, WorkerSettings
from emomon.streamer.utterance import Utterance

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def classifier() -> Any:
    """One real FusionWorker for the module: loading the model is the slow part of these tests."""
    return classifier_or_skip()


async def _xadd(client: Any, stream: str, utts: Sequence[Utterance]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for u in utts:
            pipe.xadd(stream, wire.encode(u))
        await pipe.execute()


async def _run_until(workers: Sequence[RedisStreamWorker], done: Any, timeout_s: float) -> None:
    """Run the workers until ``done()`` holds, then stop them the graceful way."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_two_workers_share_200_utterances_exactly_once(
    redis_server: RedisServer, classifier: Any
) -> None:
    async def main() -> None:
        client = connect(redis_server.url)
        settings = RedisSettings(url=redis_server.url, stream="t:two")
        ws = WorkerSettings(device="cpu", max_batch=16, max_wait_ms=5)
        sinks = [ListSink(), ListSink()]
        workers = [
            RedisStreamWorker(
                connect(redis_server.url), settings, ws, classifier, [sinks[i]], consumer=f"w{i}"
            )
            for i in range(2)
        ]
        await workers[0].ensure_group()
        utts = [synthetic_utterance(i, session=f"s{i % 3}") for i in range(200)]
        await _xadd(client, settings.stream, utts)
        await _run_until(workers, lambda: sum(len(s.events) for s in sinks) >= 200, timeout_s=60)
        ids = [e.event_id for s in sinks for e in s.events]
        assert len(ids) == 200 and len(set(ids)) == 200
        assert {e.utterance_id for s in sinks for e in s.events} == {u.utterance_id for u in utts}
        split = [len(s.events) for s in sinks]
        assert min(split) > 0, f"one worker got nothing: {split}"
        summary = await client.xpending(settings.stream, settings.group)
        assert summary["pending"] == 0  # everything acked
        for w in workers:
            await w._r.aclose()
        await client.aclose()

    asyncio.run(main())


def test_poison_entries_go_to_dead_letters_and_the_worker_keeps_serving(
    redis_server: RedisServer, classifier: Any
) -> None:
    async def main() -> None:
        client = connect(redis_server.url)
        settings = RedisSettings(url=redis_server.url, stream="t:dlq", dead_letter_stream="t:dead")
        sink = ListSink()
        w = RedisStreamWorker(
            client,
            settings,
            WorkerSettings(device="cpu", max_batch=8, max_wait_ms=5),
            classifier,
            [sink],
            consumer="w",
        )
        await w.ensure_group()
        good = [synthetic_utterance(i) for i in range(3)]
        raw = good[0].to_wire()
        await client.xadd(settings.stream, {"v": "1", "u": b"\x00\x01 not an utterance"})  # garbage
        await client.xadd(settings.stream, {"v": "1", "u": raw[: len(raw) // 2]})  # truncated
        await client.xadd(settings.stream, {"v": "2", "u": raw})  # future envelope version
        await client.xadd(
            settings.stream, {"v": "1", "u": b"EMU\x07" + raw[4:]}
        )  # future utterance format
        await client.xadd(settings.stream, {"hello": "world"})  # not ours at all
        await _xadd(client, settings.stream, good)
        await _run_until([w], lambda: len(sink.events) >= 3 and w.dead_lettered >= 5, timeout_s=30)

        dead = await client.xrange(settings.dead_letter_stream)
        reasons = [f[b"reason"].decode() for _, f in dead]
        assert reasons == [
            "bad-payload",
            "bad-payload",
            "unsupported-version",
            "bad-payload",
            "missing-version",
        ]
        details = [f[b"detail"].decode() for _, f in dead]
        assert (
            "magic" in details[0]
            and "truncated" in details[1]
            and "'2'" in details[2]
            and "version 7" in details[3]
        )
        assert all(b"source_id" in f and b"consumer" in f for _, f in dead)
        assert dead[2][1][b"orig.v"] == b"2"  # the original payload is kept for inspection
        assert sorted(e.utterance_id for e in sink.events) == sorted(u.utterance_id for u in good)
        assert (await client.xpending(settings.stream, settings.group))["pending"] == 0
        await client.aclose()

    asyncio.run(main())


class _FailsOn:
    """The real classifier, except that one utterance always makes the batch raise (a poison pill)."""

    def __init__(self, inner: Any, bad_id: str) -> None:
        self.inner, self.bad_id, self.calls = inner, bad_id, 0

    async def classify(self, utts: Sequence[Utterance]) -> list[Any]:
        self.calls += 1
        if any(u.utterance_id == self.bad_id for u in utts):
            raise RuntimeError("simulated model failure on a poison utterance")
        return list(await self.inner.classify(utts))

    async def publish(self, events: Sequence[Any], sinks: Sequence[Any]) -> None:
        await self.inner.publish(events, sinks)


def test_an_utterance_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    redis_server: RedisServer, classifier: Any
) -> None:
    async def main() -> None:
        client = connect(redis_server.url)
        settings = RedisSettings(
            url=redis_server.url, stream="t:poison", dead_letter_stream="t:dead2", max_deliveries=3
        )
        utts = [synthetic_utterance(i) for i in range(4)]
        clf = _FailsOn(classifier, utts[1].utterance_id)
        sink = ListSink()
        w = RedisStreamWorker(
            client,
            settings,
            WorkerSettings(device="cpu", max_batch=8, max_wait_ms=50),
            clf,
            [sink],
            consumer="w",
        )
        w.backoff = _NoWait()
        await w.ensure_group()
        await _xadd(client, settings.stream, utts)
        await _run_until([w], lambda: w.dead_lettered >= 1 and len(sink.events) >= 3, timeout_s=30)
        # The others were isolated from the poison and published once; the poison went to dead letters.
        assert sorted(e.utterance_id for e in sink.events) == sorted(
            u.utterance_id for i, u in enumerate(utts) if i != 1
        )
        ((dead_id, dead),) = await client.xrange(settings.dead_letter_stream)
        assert dead[b"reason"] == b"max-deliveries" and int(dead[b"deliveries"]) == 3
        assert (
            w.metrics.processing_errors.labels(stage="classify")._value.get() >= 3
        )  # counted, not silent
        assert (
            wire.decode({k[5:]: v for k, v in dead.items() if k.startswith(b"orig.")}).utterance_id
            == utts[1].utterance_id
        )
        assert (await client.xpending(settings.stream, settings.group))["pending"] == 0
        await client.aclose()

    asyncio.run(main())


class _NoWait:
    def compute(self, failures: int) -> float:
        return 0.0

    def reset(self) -> None:
        return None


def test_session_context_lives_in_redis_in_stream_time_order(
    redis_server: RedisServer, classifier: Any
) -> None:
    async def main() -> None:
        client = connect(redis_server.url)
        settings = RedisSettings(url=redis_server.url, stream="t:ctx", context_ttl_s=60)
        store = RedisContextStore(client, ttl_s=settings.context_ttl_s, max_entries=5)
        sink = ListSink()
        w = RedisStreamWorker(
            client,
            settings,
            WorkerSettings(device="cpu", max_batch=4, max_wait_ms=1),
            classifier,
            [sink],
            consumer="w",
            context=store,
        )
        await w.ensure_group()
        utts = [synthetic_utterance(i, session="ctx") for i in range(8)]
        await _xadd(client, settings.stream, list(reversed(utts)))  # arrive out of order
        await _run_until([w], lambda: len(sink.events) >= 8, timeout_s=30)
        ctx = await store.recent("ctx")
        assert [e.utterance_id for e in ctx] == [
            u.utterance_id for u in utts[-5:]
        ]  # last 5 by stream time
        by_uid = {e.utterance_id: e for e in sink.events}
        assert all(c.label == by_uid[c.utterance_id].label for c in ctx)
        await store.append(
            [by_uid[utts[-1].utterance_id]]
        )  # a redelivery rewrites, never duplicates
        assert len(await store.recent("ctx")) == 5
        assert [e.speaker for e in await store.recent("ctx", speaker="S1")] == ["S1"] * len(
            await store.recent("ctx", speaker="S1")
        )
        ttl = await client.ttl(store.key("ctx"))
        assert 0 < ttl <= 60
        await client.aclose()

    asyncio.run(main())


def test_two_workers_share_a_sessions_context_through_redis(
    redis_server: RedisServer, classifier: Any
) -> None:
    """Each turn of a session is classified by whichever worker gets it; both read the earlier
    turns' memories from Redis, so the n-th turn sees n - 1 (up to the model's 8)."""

    async def main() -> None:
        client = connect(redis_server.url)
        settings = RedisSettings(url=redis_server.url, stream="t:ctx2", context_ttl_s=60)
        store = RedisContextStore(client, ttl_s=60)
        assert classifier.model.context is not None
        classifier.context = store
        sinks = [ListSink(), ListSink()]
        workers = [
            RedisStreamWorker(
                client,
                settings,
                WorkerSettings(device="cpu", max_batch=1, max_wait_ms=1),
                classifier,
                [sinks[k]],
                consumer=f"w{k}",
                context=store,
            )
            for k in range(2)
        ]
        await workers[0].ensure_group()
        utts = [synthetic_utterance(i, session="ctx2") for i in range(5)]
        seen: list[int] = []
        for n, u in enumerate(utts, 1):  # one at a time, as a live session produces them
            await _xadd(client, settings.stream, [u])
            await _run_until(
                workers, lambda n=n: len(sinks[0].events) + len(sinks[1].events) >= n, 30
            )
            ev = next(e for s in sinks for e in s.events if e.utterance_id == u.utterance_id)
            seen.append(ev.context_turns)
        assert seen == [0, 1, 2, 3, 4]
        stored = await store.recent("ctx2")
        assert all(
            e.memory is not None and len(e.memory) == 2 * classifier.model.memory_dim
            for e in stored
        )
        await client.aclose()

    try:
        asyncio.run(main())
    finally:
        classifier.context = None


def test_worker_rides_out_a_redis_restart(classifier: Any) -> None:
    """Redis goes away under a running worker and comes back empty: the group is re-created, work resumes."""
    server = RedisServer().start()

    async def main() -> None:
        settings = RedisSettings(url=server.url, stream="t:restart")
        sink = ListSink()
        metrics = Metrics()
        w = RedisStreamWorker(
            connect(server.url, command_retries=1),
            settings,
            WorkerSettings(device="cpu", max_wait_ms=1),
            classifier,
            [sink],
            consumer="w",
            metrics=metrics,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        client = connect(server.url, command_retries=2)  # the test's own client reconnects too
        await asyncio.sleep(0.3)
        await _xadd(client, settings.stream, [synthetic_utterance(0)])
        async with asyncio.timeout(20):
            while len(sink.events) < 1:
                await asyncio.sleep(0.02)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)
        await _xadd(client, settings.stream, [synthetic_utterance(1)])
        async with asyncio.timeout(20):
            while len(sink.events) < 2:
                await asyncio.sleep(0.02)
        assert w.health()[0] and metrics.redis_errors.labels(op="worker")._value.get() >= 1
        stop.set()
        await task
        await client.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_type_wrong_header_fields_are_dead_lettered_alone(
    redis_server: RedisServer, classifier: Any
) -> None:
    """Issue 18: ``speaker: 12345`` and ``session: 12345`` crossed the wire and broke the MQTT
    sink and the context store; now they are dead-lettered and the next utterance goes out."""

    async def main() -> None:
        client = connect(redis_server.url)
        settings = RedisSettings(
            url=redis_server.url, stream="t:types", dead_letter_stream="t:types:dead"
        )
        store = RedisContextStore(client, ttl_s=60)
        sink = ListSink()
        w = RedisStreamWorker(
            client,
            settings,
            WorkerSettings(device="cpu", max_batch=8, max_wait_ms=50),
            classifier,
            [sink],
            consumer="w",
            context=store,
        )
        await w.ensure_group()
        good = synthetic_utterance(7, session="types")
        await client.xadd(settings.stream, with_header(synthetic_utterance(1), speaker=12345))
        await client.xadd(settings.stream, with_header(synthetic_utterance(2), session=12345))
        await client.xadd(settings.stream, with_header(synthetic_utterance(3), end_s=math.nan))
        await _xadd(client, settings.stream, [good])  # same batch as the poison
        await _run_until([w], lambda: len(sink.events) >= 1 and w.dead_lettered >= 3, 30)

        dead = await client.xrange(settings.dead_letter_stream)
        assert [f[b"reason"] for _, f in dead] == [b"bad-payload"] * 3
        details = [f[b"detail"].decode() for _, f in dead]
        assert "speaker" in details[0] and "session" in details[1] and "end_s" in details[2]
        assert [e.utterance_id for e in sink.events] == [good.utterance_id]
        assert "NaN" not in sink.events[0].to_json()
        assert [c.utterance_id for c in await store.recent("types")] == [good.utterance_id]
        assert (await client.xpending(settings.stream, settings.group))["pending"] == 0
        await client.aclose()

    asyncio.run(main())
