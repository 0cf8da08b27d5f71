"""Is a segment speech at all? Noise-only segments must not be labelled as emotions (issue 18.4).

webrtcvad passes broadband noise: 60 s of white or tremolo noise is "voiced" in 99-100 % of its
frames, so the segmenter cuts it into 15 s "utterances", Whisper returns no text, and the audio
expert then labels the noise (anger/disgust 0.6-0.9 measured). Voice, unlike noise, is *pitched*:
its voiced frames repeat with a period of 2.5-16 ms (60-400 Hz), and that survives telephone
band limits (the harmonics keep the period). :func:`pitched_ratio` is the share of 40 ms frames
whose normalised autocorrelation has a peak above ``PEAK`` in that lag range. Measured here:
white / tremolo noise 0.00, the shipped call's speech 0.86, RAVDESS 0.29-0.33, TESS 0.59-0.83,
espeak-ng English/Spanish 0.62/0.64 (``tests/unit/test_speech_check.py`` keeps those cases).

A segment is marked ``no_speech`` when it has hardly any pitched frames (below
``asr.min_pitched_ratio``), whatever Whisper wrote; its text is dropped (Whisper writes
"Thank you." on noise) and the worker gives it the ``no_speech`` outcome.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE_HZ = 16_000
FRAME_S = 0.04
PEAK = 0.5  # normalised autocorrelation a pitched frame reaches in the 60-400 Hz lag range
MIN_PITCH_HZ, MAX_PITCH_HZ = 60, 400


def pitched_ratio(audio: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> float:
    """Share of 40 ms frames with a clear pitch period (0 for audio shorter than one frame).

    Frames of digital silence count as not pitched. About 2 ms per 10 s of audio.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    f = int(FRAME_S * sample_rate_hz)
    n = x.size // f
    if n == 0:
        return 0.0
    frames = x[: n * f].reshape(n, f).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(frames, 2 * f, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :f]  # (n, f) autocorrelation, lag 0..f-1
    energy = ac[:, 0]
    lo, hi = sample_rate_hz // MAX_PITCH_HZ, sample_rate_hz // MIN_PITCH_HZ
    lags = np.arange(lo, hi)
    # unbiased: divide by the overlap, so long lags are not penalised
    norm = ac[:, lo:hi] / np.maximum(energy[:, None], 1e-12) * (f / (f - lags))[None, :]
    pitched = (norm.max(axis=1) > PEAK) & (energy > 1e-7 * f)
    return float(pitched.mean())


__all__ = ["pitched_ratio"]
