"""The fusion worker uses the ASR pass's Whisper frames only when they were made with the
encoder window its checkpoint was trained on; other frames are recomputed from the PCM."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from emomon.model import EmotionPrediction
from emomon.services.settings import WorkerSettings
from emomon.services.worker import FusionWorker
from emomon.streamer.utterance import Utterance


class RecordingModel:
    """Stands in for EmotionModel: remembers what it was given."""

    labels = ("neutral", "joy")
    model_id = "fake@0"

    def __init__(self, window: str) -> None:
        self.cfg = SimpleNamespace(whisper_window=window)
        self.seen: list = []

    def predict(self, batch):
        self.seen.extend(batch)
        return [
            EmotionPrediction("joy", {"neutral": 0.2, "joy": 0.8}, 0.8, ("audio",)) for _ in batch
        ]


def _utt(window: str | None) -> Utterance:
    return Utterance(
        session="s",
        speaker="A",
        channel="0",
        utterance_id="u1",
        start_s=0.0,
        end_s=1.0,
        end_wall=time.time(),
        pcm=(np.arange(16000) % 200 - 100).astype(np.int16),
        text="hi",
        whisper_frames=np.ones((50, 384), dtype=np.float32),
        whisper_window=window,
    )


def test_frames_of_the_checkpoints_window_are_used_others_recomputed() -> None:
    model = RecordingModel("10+8")
    w = FusionWorker(WorkerSettings(), model=model)
    try:
        w.classify_sync([_utt("10+8"), _utt("full"), _utt(None)])
        used = [x.whisper_frames is not None for x in model.seen]
        assert used == [True, False, False]  # None = an old streamer: the 30 s recipe
        assert all(x.audio is not None for x in model.seen)  # the PCM goes along to recompute
        assert w.frames_recomputed == 2
    finally:
        w.close()
