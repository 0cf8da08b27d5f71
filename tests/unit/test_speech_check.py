"""Voice is pitched, noise is not (issue 18, item 4): the measure that keeps noise-only
segments from being labelled as emotions."""

from __future__ import annotations

import numpy as np

from emomon.streamer.config import TranscriberConfig
from emomon.streamer.speech_check import pitched_ratio

SR = 16_000
THRESHOLD = TranscriberConfig().min_pitched_ratio


def test_noise_has_no_pitched_frames():
    rng = np.random.default_rng(0)
    t = np.arange(10 * SR) / SR
    white = rng.standard_normal(t.size).astype(np.float32) * 0.1
    tremolo = white * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)).astype(np.float32)
    assert pitched_ratio(white) < THRESHOLD / 2
    assert pitched_ratio(tremolo) < THRESHOLD / 2
    assert pitched_ratio(np.zeros(SR, np.float32)) == 0.0  # digital silence
    assert pitched_ratio(np.zeros(10, np.float32)) == 0.0  # shorter than a frame


def test_speech_is_pitched(call_pcm):
    speech = call_pcm[10 * SR : 15 * SR].astype(np.float32) / 32768  # both parties talking
    assert pitched_ratio(speech) > 0.5
    # a vowel-like tone with harmonics at 8 kHz telephone band limits (no fundamental)
    t = np.arange(2 * SR) / SR
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(3, 20)).astype(np.float32)
    assert pitched_ratio(0.1 * voiced) > 0.9
