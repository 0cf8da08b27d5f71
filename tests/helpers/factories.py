"""Small utterances and events for unit tests that need real contracts, not the model."""

from __future__ import annotations

import time

import numpy as np

from emomon.services.events import EmotionEvent
from emomon.streamer.utterance import Utterance


def utterance(i: int = 0, n: int = 800) -> Utterance:
    """Utterance ``u{i}`` of session ``s``, speaker ``A``: ``n`` samples of a sawtooth."""
    return Utterance(
        session="s",
        speaker="A",
        channel="0",
        utterance_id=f"u{i}",
        start_s=float(i),
        end_s=i + 0.05,
        end_wall=time.time(),
        pcm=(np.arange(n) % 100).astype(np.int16),
        text=f"hello {i}",
    )


def event(
    uid: str, end_s: float, label: str = "joy", speaker: str = "A", session: str = "s"
) -> EmotionEvent:
    """A confident text-only event for utterance ``uid``, ending at ``end_s``."""
    return EmotionEvent(
        session=session,
        speaker=speaker,
        utterance_id=uid,
        channel="0",
        start_s=end_s - 1,
        end_s=end_s,
        label=label,
        confidence=0.9,
        probabilities={label: 0.9},
        modalities=("text",),
        model_id="m",
        latency_ms=1.0,
        text="t",
    )
