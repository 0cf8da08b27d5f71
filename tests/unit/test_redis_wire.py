"""Unit tests of the Redis transport's pure parts: envelope, producer buffer policy, context, health."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from emomon.services.context import ContextEntry, InMemoryContextStore
from emomon.services.metrics import Metrics, MetricsServer
from emomon.services.queue import wire
from emomon.services.queue.redis import RedisProducer, connect
from emomon.services.settings import RedisSettings
from tests.helpers.factories import event as _event
from tests.helpers.factories import utterance as _utt


def test_wire_roundtrip_keeps_the_utterance() -> None:
    u = _utt()
    fields = wire.encode(u)
    assert fields["v"] == b"1"
    back = wire.decode({k.encode(): v for k, v in fields.items()})  # redis-py hands back bytes keys
    assert back.utterance_id == u.utterance_id and back.text == u.text
    assert np.array_equal(back.pcm, u.pcm)


def test_wire_carries_the_whisper_frames_as_float16() -> None:
    frames = np.random.default_rng(0).normal(0, 1, (25, 384)).astype(np.float32)
    u = _utt().with_updates(whisper_frames=frames)
    back = wire.decode(
        {k.encode() if isinstance(k, str) else k: v for k, v in wire.encode(u).items()}
    )
    assert back.whisper_frames is not None and back.whisper_frames.dtype == np.float32
    assert np.array_equal(back.whisper_frames, frames.astype(np.float16).astype(np.float32))
    assert wire.FIELD_FRAMES not in wire.encode(u, with_frames=False)
    assert wire.decode(wire.encode(u, with_frames=False)).whisper_frames is None
    # Frames say which encoder window made them; an entry without the tag is the old recipe.
    assert back.whisper_window == "full"
    tagged = wire.decode(wire.encode(u.with_updates(whisper_window="10+8")))
    assert tagged.whisper_window == "10+8"
    assert wire.FIELD_FRAMES_WINDOW not in wire.encode(u, with_frames=False)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"u": b"x"}, "missing-version"),
        ({b"v": b"2", b"u": b"x"}, "unsupported-version"),
        ({b"v": b"1"}, "missing-payload"),
        ({b"v": b"1", b"u": b"\x00garbage"}, "bad-payload"),
        ({b"v": b"1", b"u": _utt().to_wire()[:-7]}, "bad-payload"),  # truncated PCM
        (
            {b"v": b"1", b"u": b"EMU\x09" + _utt().to_wire()[4:]},
            "bad-payload",
        ),  # future utterance format
        (
            {b"v": b"1", b"u": _utt().to_wire(), b"f": b"F16" + bytes(8) + b"\x00"},
            "bad-payload",
        ),  # frames
    ],
)
def test_wire_rejects_bad_entries_with_a_reason(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(wire.WireDecodeError) as ei:
        wire.decode(fields)
    assert ei.value.reason == reason
    assert str(ei.value)


def test_producer_overflow_drops_oldest_and_counts() -> None:
    """Offer never waits: with Redis never reached, a full buffer sheds its oldest utterance."""

    async def main() -> None:
        metrics = Metrics()
        client = connect("redis://127.0.0.1:1/0")  # never used: the drain task is not started
        p = RedisProducer(client, RedisSettings(buffer_size=10), metrics)
        t0 = time.perf_counter()
        accepted = [p.offer(_utt(i)) for i in range(25)]
        assert time.perf_counter() - t0 < 2  # never waits for Redis (a wait would be seconds)
        assert accepted.count(False) == 15 and p.dropped == 15 and p.buffered == 10
        assert [u.utterance_id for u, _ in p._buf] == [
            f"u{i}" for i in range(15, 25)
        ]  # newest kept
        assert metrics.dropped.labels(reason="buffer_full")._value.get() == 15
        await client.aclose()

    asyncio.run(main())


def test_in_memory_context_orders_by_stream_time_and_is_idempotent() -> None:
    async def main() -> None:
        store = InMemoryContextStore(ttl_s=60, max_entries=3)
        await store.append([_event("u3", 3.0), _event("u1", 1.0, speaker="B"), _event("u2", 2.0)])
        await store.append([_event("u2", 2.0), _event("u4", 4.0, label="anger")])  # u2 redelivered
        got = await store.recent("s")
        assert [e.utterance_id for e in got] == ["u2", "u3", "u4"]
        assert [e.utterance_id for e in await store.recent("s", speaker="A", n=1)] == ["u4"]
        assert await store.recent("other") == []

    asyncio.run(main())


def test_context_entry_json_is_canonical() -> None:
    e = ContextEntry.from_event(_event("u1", 1.23456))
    assert e.to_json() == ContextEntry.from_json(e.to_json()).to_json()
    assert json.loads(e.to_json())["b"] == 1.235


def test_metrics_server_serves_health_and_metrics() -> None:
    async def main() -> None:
        metrics = Metrics()
        metrics.events.inc(3)
        healthy = {"ok": True}
        server = MetricsServer(
            metrics, lambda: (healthy["ok"], {"redis": "up"}), port=0, host="127.0.0.1"
        )
        port = await server.start()

        async def get(path: str) -> tuple[str, bytes]:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = await r.read()
            w.close()
            head, _, body = data.partition(b"\r\n\r\n")
            return head.split(b"\r\n")[0].decode(), body

        status, body = await get("/metrics")
        assert status.endswith("200 OK") and b"emomon_events_total 3.0" in body
        status, body = await get("/healthz")
        assert status.endswith("200 OK") and json.loads(body)["redis"] == "up"
        healthy["ok"] = False
        status, _ = await get("/healthz")
        assert "503" in status
        await server.close()

    asyncio.run(main())


def test_stream_replies_parse_in_both_resp_shapes() -> None:
    from emomon.services.queue.redis.client import entries_from_reply as _entries

    rows = [(b"1-0", {b"v": b"1"}), (b"1-1", {})]  # the second was deleted after delivery
    resp2 = [[b"s", rows]]
    resp3 = {b"s": [[b"1-0", {b"v": b"1"}], [b"1-1", None]]}
    for reply in (resp2, resp3):
        got = _entries(reply)
        assert [(e.id, e.fields) for e in got] == [(b"1-0", {b"v": b"1"}), (b"1-1", {})]
    assert _entries(None) == [] and _entries([]) == []


def test_json_log_lines_are_one_object_each() -> None:
    import logging

    from emomon.services.commands.common import JsonLogFormatter

    rec = logging.LogRecord(
        "emomon.redis", logging.WARNING, __file__, 1, "Redis %s", ("down",), None
    )
    d = json.loads(JsonLogFormatter().format(rec))
    assert d["level"] == "WARNING" and d["logger"] == "emomon.redis" and d["msg"] == "Redis down"


class _DownPipeline:
    """A pipeline whose Redis is away: every execute fails after a short while."""

    async def __aenter__(self) -> _DownPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, *args: object, **kwargs: object) -> None:
        return None

    async def execute(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        await asyncio.sleep(0.05)
        raise RedisConnectionError("Redis is away (fake)")


class _DownClient:
    def pipeline(self, transaction: bool = False) -> _DownPipeline:
        return _DownPipeline()


def test_a_failed_batch_rejoining_a_full_buffer_keeps_the_newest() -> None:
    """Offers made while a batch is in flight fill the buffer; when the batch fails and comes back,
    the oldest beyond ``buffer_size`` go, so what survives is always the newest utterances."""
    from redis.backoff import ConstantBackoff

    async def main() -> None:
        p = RedisProducer(_DownClient(), RedisSettings(buffer_size=5), backoff=ConstantBackoff(60))  # type: ignore[arg-type]
        for i in range(5):
            p.offer(_utt(i))
        p.start()
        await asyncio.sleep(0.01)  # the 5 are in flight now
        assert p._inflight == 5
        for i in range(5, 11):
            p.offer(_utt(i))  # the 11th pushes out the oldest queued (u5)
        await asyncio.sleep(0.1)  # the batch failed and came back
        assert p.failures == 1
        assert [u.utterance_id for u, _ in p._buf] == [f"u{i}" for i in range(6, 11)]
        assert p.dropped == 6 and p.buffered == 5
        await p.close(0.0)
        assert p.dropped == 11  # what could not be written at shutdown is counted too

    asyncio.run(main())
