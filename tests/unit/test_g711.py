"""G.711 tables against known values and an independent encoder; L16; the streaming resampler."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.signal import resample_poly

from emomon.streamer.sources.g711 import (
    ALAW_TABLE,
    ULAW_TABLE,
    StreamResampler,
    decode_alaw,
    decode_l16,
    decode_ulaw,
)

# -- an independent G.711 *encoder* (segment search, as in ITU-T G.191 / Sun g711.c) ---------------
_SEG_END = (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for i, end in enumerate(ends):
        if value <= end:
            return i
    return len(ends)


def linear2ulaw(pcm: int) -> int:
    bias, clip = 0x84, 32635
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, clip) + bias
    seg = _segment(pcm, _SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 3)) & 0x0F)) ^ mask


def linear2alaw(pcm: int) -> int:
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    seg = _segment(pcm, (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF))
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 4) & 0x0F if seg < 2 else (pcm >> (seg + 3)) & 0x0F
    return aval ^ mask


# -- known values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "value"),
    [
        (0xFF, 0),
        (0x7F, 0),
        (0x00, -32124),
        (0x80, 32124),
        (0xFE, 8),
        (0x7E, -8),
        (0xEF, 132),
        (0x6F, -132),
    ],
)
def test_ulaw_known_values(code: int, value: int) -> None:
    assert int(ULAW_TABLE[code]) == value


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0x80, 5504), (0x00, -5504)],
)
def test_alaw_known_values(code: int, value: int) -> None:
    assert int(ALAW_TABLE[code]) == value


def test_tables_are_odd_symmetric_and_monotone() -> None:
    # μ-law: code c and c ^ 0x80 are the same magnitude with opposite sign; magnitudes fall with code.
    for c in range(128):
        assert ULAW_TABLE[c] == -ULAW_TABLE[c | 0x80]
        assert ALAW_TABLE[c] == -ALAW_TABLE[c | 0x80]
    mags = np.abs(ULAW_TABLE[0x80:].astype(int))
    assert np.all(np.diff(mags) < 0)
    assert (
        len(set(ALAW_TABLE.tolist())) == 256 and len(set(ULAW_TABLE.tolist())) == 255
    )  # ±0 in μ-law


def test_tables_match_audioop_where_available() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip(
            "audioop"
        )  # gone in Python 3.13: then only the checks above run
    codes = bytes(range(256))
    assert np.array_equal(
        decode_ulaw(codes), np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)
    )
    assert np.array_equal(
        decode_alaw(codes), np.frombuffer(audioop.alaw2lin(codes, 2), dtype=np.int16)
    )


def test_round_trip_code_to_linear_to_code() -> None:
    for c in range(256):
        expected_u = 0xFF if c == 0x7F else c  # μ-law has two zeros; the encoder picks +0
        assert linear2ulaw(int(ULAW_TABLE[c])) == expected_u, hex(c)
        assert linear2alaw(int(ALAW_TABLE[c])) == c, hex(c)


def test_round_trip_linear_error_is_within_half_a_step() -> None:
    x = np.arange(-32768, 32768, 7)
    u = decode_ulaw(bytes(linear2ulaw(int(v)) for v in x)).astype(int)
    a = decode_alaw(bytes(linear2alaw(int(v)) for v in x)).astype(int)
    # Step size grows with the segment: relative error bounded (≈ 1/32 of the value) plus the small-value step.
    assert np.all(np.abs(u - np.clip(x, -32124, 32124)) <= np.abs(x) / 30 + 8)
    assert np.all(np.abs(a - np.clip(x, -32256, 32256)) <= np.abs(x) / 30 + 16)
    sine = (8000 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype(int)
    dec = decode_ulaw(bytes(linear2ulaw(int(v)) for v in sine)).astype(float)
    snr = 10 * np.log10(np.sum(sine.astype(float) ** 2) / np.sum((dec - sine) ** 2))
    assert snr > 35  # G.711's textbook ~38 dB for a loud sine


def test_l16_big_endian_and_stereo_mixdown() -> None:
    assert decode_l16(b"\x00\x01\xff\xff\x80\x00").tolist() == [1, -1, -32768]
    assert decode_l16(b"\x00\x10\x00\x20", channels=2).tolist() == [24]
    with pytest.raises(ValueError):
        decode_l16(b"\x00\x01\x00", channels=1)
    with pytest.raises(ValueError):
        decode_l16(b"\x00\x01", channels=2)


# -- resampler ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rate_in", "rate_out"), [(8000, 16000), (44100, 16000), (48000, 16000), (16000, 16000)]
)
def test_streaming_resampler_equals_whole_signal_resample_poly(rate_in: int, rate_out: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(9000) * 3000
    r = StreamResampler(rate_in, rate_out)
    parts, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 500))  # packet-sized and odd splits alike
        parts.append(r.process(x[i : i + n]))
        i += n
    parts.append(r.flush())
    y = np.concatenate(parts)
    g = np.gcd(rate_in, rate_out)
    ref = resample_poly(x, rate_out // g, rate_in // g)
    assert y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < 1e-6


def test_resampler_no_click_at_packet_boundaries() -> None:
    # A 1 kHz tone cut into 20 ms G.711 packets: the 16 kHz output has no boundary artefacts.
    t = np.arange(8000) / 8000
    x = 10000 * np.sin(2 * np.pi * 1000 * t)
    r = StreamResampler(8000, 16000)
    y = np.concatenate([r.process(x[i : i + 160]) for i in range(0, 8000, 160)] + [r.flush()])
    ref = 10000 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    err = (y - ref)[200:-200]
    assert np.max(np.abs(err)) < 0.01 * 10000
    assert r.delay_in_samples == 10.0  # 1.25 ms lookahead at 8 kHz


def test_resampler_memory_stays_bounded() -> None:
    r = StreamResampler(8000, 16000)
    for _ in range(500):
        r.process(np.ones(160))
    assert r._hist.size < 64
