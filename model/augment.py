"""Audio augmentation for training an audio branch that survives real calls (issue #14).

Two acted corpora recorded in one studio each teach recording conditions as much as emotion.
Each training copy of a clip goes through a random chain that changes what a real call
changes and keeps what an emotion is:

* gain ±20 dB (with clipping when it overdrives: real phones clip),
* telephone channel: 8 kHz band limit and a G.711 μ-law or A-law round trip
  (:mod:`emomon.model.g711`, the codec the RTP source decodes),
* additive noise (white, pink or brown) at 5–30 dB SNR,
* mild reverberation (an exponentially decaying noise impulse response, RT60 0.15–0.5 s),
* small speed perturbation (×0.92–1.08, which also moves the pitch), as in Kaldi's recipes.

Everything is numpy/scipy and seeded: the same (clip, seed) gives the same copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE_HZ
from .g711 import roundtrip


@dataclass(frozen=True)
class AugmentConfig:
    p_telephone: float = 0.5
    p_noise: float = 0.6
    snr_db: tuple[float, float] = (5.0, 30.0)
    p_reverb: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.5)
    p_speed: float = 0.3
    speed: tuple[float, float] = (0.92, 1.08)
    gain_db: tuple[float, float] = (-20.0, 20.0)


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f) or brown (1/f²) noise of ``n`` samples."""
    white = rng.standard_normal(n)
    if color == "white":
        x = white
    else:
        spec = np.fft.rfft(white)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        spec /= f ** (0.5 if color == "pink" else 1.0)
        x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(x.astype(np.float64) ** 2))
    if power <= 0:
        return x
    noise = colored_noise(x.size, color, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def reverb(x: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response: direct path + exponentially decaying noise."""
    from scipy.signal import fftconvolve

    n = int(rt60_s * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s) * 0.3
    ir[0] = 1.0
    y = fftconvolve(x, ir)[: x.size]
    peak_in, peak_out = np.abs(x).max(), np.abs(y).max()
    return (y * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (tempo and pitch together), by resampling."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    fr = Fraction(factor).limit_denominator(50)
    return resample_poly(x, fr.denominator, fr.numerator).astype(np.float32)


def telephone(x: np.ndarray, law: str) -> np.ndarray:
    """8 kHz band limit and a G.711 round trip, back at 16 kHz."""
    from scipy.signal import resample_poly

    y = roundtrip(resample_poly(x, 1, 2), law)
    return resample_poly(y, 2, 1).astype(np.float32)


def augment(
    x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None = None
) -> np.ndarray:
    """One random copy of the 16 kHz float clip ``x`` (see the module docstring)."""
    cfg = cfg or AugmentConfig()
    y = np.asarray(x, dtype=np.float32).reshape(-1)
    if y.size == 0:
        return y
    if rng.random() < cfg.p_speed:
        y = speed(y, float(rng.uniform(*cfg.speed)))
    if rng.random() < cfg.p_reverb:
        y = reverb(y, float(rng.uniform(*cfg.rt60_s)), rng)
    if rng.random() < cfg.p_noise:
        color = str(rng.choice(["white", "pink", "brown"]))
        y = add_noise(y, float(rng.uniform(*cfg.snr_db)), color, rng)
    y = np.clip(y * np.float32(10 ** (rng.uniform(*cfg.gain_db) / 20)), -1.0, 1.0)
    if rng.random() < cfg.p_telephone:
        y = telephone(y, "ulaw" if rng.random() < 0.5 else "alaw")
    return np.clip(y, -1.0, 1.0).astype(np.float32)
