"""The wire decoder against hostile entries (issue 18, item 1): wrong types, non-finite numbers,
oversized strings and PCM, missing fields. Whatever comes in, only ``WireDecodeError`` leaves,
valid entries round-trip, big claims are refused before anything big is built, and in a batch
only the bad entry is dead-lettered."""

from __future__ import annotations

import asyncio
import json
import math
import struct
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emomon.services.events import EmotionEvent
from emomon.services.queue import wire
from emomon.services.queue.redis import RedisStreamWorker
from emomon.services.queue.redis.client import Entry
from emomon.services.settings import RedisSettings, WorkerSettings
from emomon.streamer.utterance import Utterance
from emomon.streamer.utterance_schema import MAX_ID_CHARS, MAX_PCM_SAMPLES, MAX_TEXT_CHARS
from tests.helpers.factories import event
from tests.helpers.factories import utterance as _utt

HEADER_FIELDS = (
    "session",
    "speaker",
    "channel",
    "utterance_id",
    "start_s",
    "end_s",
    "end_wall",
    "text",
    "language",
    "asr_confidence",
    "speaker_provisional",
    "timings",
    "pcm_samples",
    "sample_rate_hz",
)

# JSON values of every type, including the ones json.dumps writes for non-finite floats.
hostile = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["", "A" * (MAX_ID_CHARS + 1), "A" * (MAX_TEXT_CHARS + 1)]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _entry(header: dict[str, Any], body: bytes) -> dict[bytes, bytes]:
    hdr = json.dumps(header).encode()  # allow_nan: the hostile side writes NaN if it likes
    return {b"v": b"1", b"u": b"EMU\x01" + struct.pack(">I", len(hdr)) + hdr + body}


def _header_of(utt: Utterance) -> tuple[dict[str, Any], bytes]:
    raw = utt.to_wire()
    (hlen,) = struct.unpack(">I", raw[4:8])
    return json.loads(raw[8 : 8 + hlen]), raw[8 + hlen :]


def _assert_sane(u: Utterance) -> None:
    """What the decoder let through is what the rest of the worker may rely on."""
    for name in ("session", "speaker", "channel", "utterance_id"):
        v = getattr(u, name)
        assert isinstance(v, str) and 0 < len(v) <= MAX_ID_CHARS
    assert isinstance(u.text, str) and len(u.text) <= MAX_TEXT_CHARS
    for t in (u.start_s, u.end_s, u.end_wall, *u.timings.values()):
        assert isinstance(t, float) and math.isfinite(t) and t >= 0
    assert u.end_s >= u.start_s
    assert u.pcm.dtype == np.int16 and u.pcm.ndim == 1 and u.pcm.shape[0] <= MAX_PCM_SAMPLES


def _decode_or_reason(fields: dict[Any, Any]) -> Utterance | None:
    try:
        u = wire.decode(fields)
    except wire.WireDecodeError as e:
        assert e.reason and "\n" not in str(e)  # one line for the dead-letter record
        return None
    _assert_sane(u)
    return u


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(HEADER_FIELDS), hostile, min_size=1, max_size=4))
def test_type_wrong_and_non_finite_header_fields_only_raise_the_decode_error(
    changes: dict[str, Any],
) -> None:
    header, body = _header_of(_utt(3))
    header.update(changes)
    _decode_or_reason(_entry(header, body))


@settings(max_examples=100, deadline=None)
@given(missing=st.sets(st.sampled_from(HEADER_FIELDS), min_size=1))
def test_missing_header_fields_only_raise_the_decode_error(missing: set[str]) -> None:
    header, body = _header_of(_utt(3))
    for name in missing:
        header.pop(name)
    _decode_or_reason(_entry(header, body))


@settings(max_examples=150, deadline=None)
@given(
    claimed=st.integers(min_value=-5, max_value=2**40),
    body=st.binary(max_size=64),
    timings=st.dictionaries(st.text(max_size=80), hostile, max_size=40),
)
def test_pcm_and_timings_that_disagree_with_the_header_are_refused(
    claimed: int, body: bytes, timings: dict[str, Any]
) -> None:
    header, _ = _header_of(_utt(3))
    header.update(pcm_samples=claimed, timings=timings)
    u = _decode_or_reason(_entry(header, body))
    if u is not None:
        assert u.pcm.shape[0] == claimed and 2 * claimed == len(body)


@settings(max_examples=150, deadline=None)
@given(
    version=hostile | st.binary(max_size=8),
    payload=hostile | st.binary(max_size=64),
    frames=st.none() | hostile | st.binary(max_size=64),
    window=st.none() | hostile | st.binary(max_size=64),
)
def test_whole_entries_of_any_shape_only_raise_the_decode_error(
    version: Any, payload: Any, frames: Any, window: Any
) -> None:
    fields: dict[Any, Any] = {b"v": version, b"u": payload}
    if frames is not None:
        fields[b"f"] = frames
    if window is not None:
        fields[b"fw"] = window
    _decode_or_reason(fields)


ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    session=ids,
    speaker=ids,
    uid=ids,
    start=seconds,
    length=seconds,
    text=st.text(max_size=200),
    timings=st.dictionaries(st.text(min_size=1, max_size=64), seconds, max_size=8),
    pcm=st.lists(st.integers(-32768, 32767), max_size=200),
    with_frames=st.booleans(),
)
def test_valid_entries_round_trip(
    session: str,
    speaker: str,
    uid: str,
    start: float,
    length: float,
    text: str,
    timings: dict[str, float],
    pcm: list[int],
    with_frames: bool,
) -> None:
    frames = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4) if with_frames else None
    utt = Utterance(
        session=session,
        speaker=speaker,
        channel="0",
        utterance_id=uid,
        start_s=start,
        end_s=start + length,
        end_wall=1.7e9,
        pcm=np.array(pcm, dtype=np.int16),
        text=text,
        timings=timings,
        whisper_frames=frames,
        whisper_window="10+8" if with_frames else None,
    )
    got = wire.decode(wire.encode(utt))
    for name in utt.__dataclass_fields__:
        if name not in ("pcm", "whisper_frames"):
            assert getattr(got, name) == getattr(utt, name), name
    np.testing.assert_array_equal(got.pcm, utt.pcm)
    if with_frames:
        assert got.whisper_frames is not None and got.whisper_window == "10+8"
        np.testing.assert_allclose(got.whisper_frames, frames, atol=1e-3)


def _peak_bytes(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_oversized_claims_are_refused_without_building_big_objects() -> None:
    header, body = _header_of(_utt(3))
    huge_timing = dict(header, timings={"asr": "A" * 1_000_000})  # the campaign's 1 MB entry
    huge_pcm = dict(header, pcm_samples=2**31)  # claims 4 GB of PCM
    too_long = dict(header, pcm_samples=MAX_PCM_SAMPLES + 1)
    frames = b"F16" + struct.pack(">II", 100_000, 100_000) + b"\x00" * 16  # claims 20 GB
    cases = [
        _entry(huge_timing, body),
        _entry(huge_pcm, body),
        _entry(too_long, b"\x00\x00" * (MAX_PCM_SAMPLES + 1)),
        {**_entry(header, body), b"f": frames},
    ]
    for fields in cases:
        size = sum(len(v) for v in fields.values())
        peak = _peak_bytes(lambda f=fields: _decode_or_reason(f))  # type: ignore[misc]
        assert peak < 200_000 + size // 10, f"decoding a {size}-byte entry allocated {peak} bytes"
        assert _decode_or_reason(fields) is None


def test_non_finite_and_negative_times_name_the_field() -> None:
    header, body = _header_of(_utt(3))
    for change, word in [
        ({"end_s": float("nan")}, "end_s"),
        ({"start_s": -1.0}, "start_s"),
        ({"start_s": 9.0, "end_s": 1.0}, "before"),
        ({"speaker": 12345}, "speaker"),
        ({"session": 12345}, "session"),
        ({"timings": {"asr": float("inf")}}, "timings"),
    ]:
        try:
            wire.decode(_entry(dict(header, **change), body))
        except wire.WireDecodeError as e:
            assert e.reason == "bad-payload" and word in str(e), str(e)
        else:
            raise AssertionError(f"{change} was accepted")


def test_non_finite_frames_are_refused() -> None:
    fields = wire.encode(_utt(1))
    bad = np.full((2, 3), np.inf, dtype=np.float32)
    fields[wire.FIELD_FRAMES] = wire.encode_frames(bad)
    assert _decode_or_reason(fields) is None


def test_events_refuse_non_finite_numbers_and_json_is_strict() -> None:
    ok = event("u1", 2.0)
    assert "NaN" not in ok.to_json()
    for bad in ({"end_s": float("nan")}, {"confidence": float("inf")}):
        try:
            EmotionEvent(**{**_event_kwargs(ok), **bad})
        except ValueError as e:
            assert "non-finite" in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def _event_kwargs(ev: EmotionEvent) -> dict[str, Any]:
    return {f: getattr(ev, f) for f in ev.__dataclass_fields__}


# -- a batch with one poison entry: only that one is dead-lettered ---------------------------


class _Pipe:
    def __init__(self, redis: _FakeRedis) -> None:
        self.r = redis

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, stream: str, fields: dict[Any, Any], **kw: Any) -> None:
        self.r.dead.append(fields)

    def xack(self, stream: str, group: str, *ids: Any) -> None:
        self.r.acked.extend(ids)

    async def execute(self) -> list[Any]:
        return []


class _FakeRedis:
    """Just the commands ``RedisStreamWorker._handle`` sends; the real server is tested in
    tests/integration/test_redis_worker.py."""

    def __init__(self) -> None:
        self.dead: list[dict[Any, Any]] = []
        self.acked: list[Any] = []

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self)

    async def xack(self, stream: str, group: str, *ids: Any) -> int:
        self.acked.extend(ids)
        return len(ids)


class _Labeller:
    async def classify(self, utts: Sequence[Utterance]) -> list[EmotionEvent]:
        return [event(u.utterance_id, u.end_s + 1, session=u.session) for u in utts]


class _ListSink:
    def __init__(self) -> None:
        self.events: list[EmotionEvent] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, ev: EmotionEvent) -> None:
        self.events.append(ev)


def test_a_poison_entry_is_dead_lettered_alone_and_its_batch_mate_is_delivered() -> None:
    header, body = _header_of(_utt(1))
    poison = _entry(dict(header, session=12345), body)
    valid = wire.encode(_utt(2))
    redis, sink = _FakeRedis(), _ListSink()
    w = RedisStreamWorker(
        redis,  # type: ignore[arg-type]
        RedisSettings(stream="t:s"),
        WorkerSettings(device="cpu"),
        _Labeller(),
        [sink],
        consumer="w",
    )
    batch = [Entry(b"1-0", poison, 1), Entry(b"2-0", valid, 1)]  # type: ignore[arg-type]
    assert asyncio.run(w._handle(batch)) == 2
    assert [e.utterance_id for e in sink.events] == ["u2"]
    assert len(redis.dead) == 1 and redis.dead[0]["reason"] == "bad-payload"
    assert "session" in redis.dead[0]["detail"] and redis.dead[0]["source_id"] == b"1-0"
    assert sorted(redis.acked) == [b"1-0", b"2-0"]
