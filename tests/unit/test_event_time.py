"""The time fields of events (issue #15): one session clock in wall-clock time, and latency only
where an arrival time exists — through the worker, the JSON Schema and the wire format."""

from __future__ import annotations

import jsonschema
import numpy as np

from emomon.services.events import EmotionEvent, iso_time, load_schema
from emomon.streamer.utterance import Utterance


def _event(**kw: object) -> EmotionEvent:
    base: dict[str, object] = dict(
        session="call",
        speaker="alice",
        utterance_id="call:0:000001",
        channel="ssrc-000000a1",
        start_s=8.6,
        end_s=10.0,
        label="neutral",
        confidence=0.8,
        probabilities={"neutral": 0.8, "joy": 0.2},
        modalities=("text", "audio"),
        model_id="m",
        latency_ms=412.0,
    )
    base.update(kw)
    return EmotionEvent(**base)  # type: ignore[arg-type]


def test_wall_clock_fields_validate_and_round_trip() -> None:
    origin = 1_796_000_000.25
    ev = _event(
        session_started_at=iso_time(origin),
        started_at=iso_time(origin + 8.6),
        ended_at=iso_time(origin + 10.0),
    )
    d = ev.to_dict()
    jsonschema.validate(d, load_schema())
    assert d["session_started_at"].endswith("+00:00") and d["started_at"] < d["ended_at"]
    assert EmotionEvent.from_dict(d).to_dict() == d


def test_a_replay_faster_than_real_time_claims_no_latency() -> None:
    d = _event(latency_ms=None).to_dict()
    assert "latency_ms" not in d
    jsonschema.validate(d, load_schema())
    assert EmotionEvent.from_dict(d).latency_ms is None
    assert '"latency_ms"' not in _event(latency_ms=None).to_json()


def test_worker_fills_time_fields_and_latency_only_when_live() -> None:
    """What the fusion worker makes of ``origin_wall`` and ``live`` (the model stubbed out only
    where it predicts: the fields under test are the worker's own)."""
    from types import SimpleNamespace

    from emomon.services.worker import FusionWorker

    class Model:
        model_id = "m"

        def predict(self, inputs):  # type: ignore[no-untyped-def]
            return [
                SimpleNamespace(
                    label="neutral",
                    confidence=0.9,
                    probabilities={"neutral": 0.9, "joy": 0.1},
                    modalities=("text",),
                )
                for _ in inputs
            ]

    worker = FusionWorker.__new__(FusionWorker)
    worker.model = Model()
    worker.settings = SimpleNamespace(include_text=True)
    worker.context = None
    worker.frames_window = None
    worker.frames_recomputed = 0
    worker.batches = worker.events = 0
    worker._inputs = lambda utts, hist: [None] * len(utts)  # type: ignore[method-assign]
    pcm = np.zeros(1600, dtype=np.int16)
    utt = Utterance("call", "alice", "ssrc-1", "call:x:1", 8.6, 10.0, 1e9, pcm, text="hi")
    live, replay = worker.classify_sync(
        [
            utt.with_updates(origin_wall=1_796_000_000.0),
            utt.with_updates(utterance_id="call:x:2", live=False),
        ]
    )
    assert live.latency_ms is not None and replay.latency_ms is None
    assert live.started_at == iso_time(1_796_000_008.6)
    assert live.session_started_at == iso_time(1_796_000_000.0)
    assert replay.started_at is None  # the source did not know its origin


def test_time_fields_cross_the_wire() -> None:
    pcm = np.zeros(160, dtype=np.int16)
    u = Utterance(
        "call", "alice", "0", "call:x:1", 1.0, 2.0, 1e9, pcm, origin_wall=1.5e9, live=False
    )
    v = Utterance.from_wire(u.to_wire())
    assert v.origin_wall == 1.5e9 and v.live is False
