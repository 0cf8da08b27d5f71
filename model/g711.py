"""G.711 (μ-law, A-law) as numpy tables: a leaf both halves use.

The live RTP source decodes G.711 payloads with these tables (``emomon.streamer.sources.g711``
re-exports them), and training passes clean clips through the same codec to make them sound
like a phone line (:func:`roundtrip`). ``audioop`` is gone in Python 3.13, so the tables are
built once from the ITU-T G.711 expansion formulas (the 16-bit scaling of the classic Sun
``g711.c`` / ``audioop``: μ-law 0x00 → -32124, A-law 0xD5 → 8); decoding is one
fancy-indexing call and encoding picks the nearest code.
"""

from __future__ import annotations

import numpy as np


def _ulaw_table() -> np.ndarray:
    """ITU-T G.711 μ-law expansion of every code to int16 (bits inverted on the wire)."""
    out = np.empty(256, dtype=np.int16)
    for code in range(256):
        u = ~code & 0xFF
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        out[code] = -magnitude if u & 0x80 else magnitude
    return out


def _alaw_table() -> np.ndarray:
    """ITU-T G.711 A-law expansion of every code to int16 (even bits inverted, sign bit 1 = +)."""
    out = np.empty(256, dtype=np.int16)
    for code in range(256):
        a = code ^ 0x55
        exponent = (a >> 4) & 0x07
        mantissa = a & 0x0F
        # Segment 0 is linear; segments 1..7 carry an implicit leading 1 (0x100) and the half step (0x08).
        magnitude = (
            (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
        )
        out[code] = magnitude if a & 0x80 else -magnitude
    return out


ULAW_TABLE: np.ndarray = _ulaw_table()
ALAW_TABLE: np.ndarray = _alaw_table()
ULAW_TABLE.flags.writeable = False
ALAW_TABLE.flags.writeable = False


def decode_ulaw(payload: bytes) -> np.ndarray:
    """μ-law bytes → int16 samples (one byte per sample)."""
    return ULAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def decode_alaw(payload: bytes) -> np.ndarray:
    """A-law bytes → int16 samples (one byte per sample)."""
    return ALAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def encode(samples: np.ndarray, law: str = "ulaw") -> bytes:
    """int16-range samples → G.711 bytes, each sample to the code that decodes nearest to it."""
    table = ULAW_TABLE if law == "ulaw" else ALAW_TABLE
    order = np.argsort(table, kind="stable")
    levels = table[order].astype(np.float64)
    y = np.asarray(samples, dtype=np.float64).reshape(-1)
    idx = np.clip(np.searchsorted(levels, y), 1, levels.size - 1)
    nearer = np.where(np.abs(levels[idx - 1] - y) <= np.abs(levels[idx] - y), idx - 1, idx)
    return order[nearer].astype(np.uint8).tobytes()


def roundtrip(x: np.ndarray, law: str = "ulaw") -> np.ndarray:
    """Float samples in [-1, 1] through a G.711 encoder and decoder (no resampling)."""
    if law not in ("ulaw", "alaw"):
        raise ValueError(f"law must be ulaw or alaw, got {law!r}")
    code = encode(np.clip(x, -1.0, 1.0) * 32767.0, law)
    pcm = decode_ulaw(code) if law == "ulaw" else decode_alaw(code)
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
