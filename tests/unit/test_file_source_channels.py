"""The file source decodes any channel count, rate and sample format without crashing (issue #18).

Eight channels used to end the process with a segmentation fault inside PyAV; these tests
decode generated files and check what comes out: one int16 row per channel at 16 kHz, in the
file's channel order, nothing mixed, non-finite samples cleaned with one warning, truncated
files warned about, and too many channels refused with a one-line error.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from emomon.streamer.sources.base import SourceError
from emomon.streamer.sources.file import FileSource, _decode, probe_channels
from emomon.streamer.utterance import SAMPLE_RATE_HZ

DURATION_S = 0.2
CHANNELS = (1, 2, 6, 8, 12, 16)
RATES = (8000, 16000, 44100, 48000, 96000)
CODECS = {"s16": "pcm_s16le", "s32": "pcm_s32le", "flt": "pcm_f32le"}
DTYPES = {"s16": np.int16, "s32": np.int32, "flt": np.float32}


def _tones(channels: int, rate: int) -> np.ndarray:
    """(n, channels) float in [-1, 1]: a 200 Hz tone whose level grows with the channel index."""
    t = np.arange(int(rate * DURATION_S)) / rate
    levels = 0.05 * (np.arange(channels) + 1) / channels * 8
    return np.sin(2 * np.pi * 200 * t)[:, None] * levels[None, :]


def _as_format(x: np.ndarray, fmt: str) -> np.ndarray:
    dtype = DTYPES[fmt]
    if fmt == "flt":
        return x.astype(dtype)
    return np.round(x * np.iinfo(dtype).max).astype(dtype)


def write_wav(path: Path, x: np.ndarray, rate: int, fmt: str) -> Path:
    """A WAV through FFmpeg's muxer (WAVE_FORMAT_EXTENSIBLE with a channel mask past 2)."""
    channels = x.shape[1]
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream(CODECS[fmt], rate=rate, layout=av.AudioLayout(f"{channels}c"))
        data = _as_format(x, fmt).reshape(1, -1)  # packed: one interleaved row
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=s.layout)
        frame.sample_rate = rate
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    return path


def write_plain_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    """An int16 WAV from the standard library: plain PCM, no channel mask (unordered layout)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(_as_format(x, "s16").tobytes())
    return path


def _decoded(path: Path) -> np.ndarray:
    return np.concatenate(list(_decode(path, probe_channels(path))), axis=1)


def _check(out: np.ndarray, channels: int) -> None:
    assert out.dtype == np.int16
    assert out.shape[0] == channels
    # 16 kHz out whatever the rate in: 0.2 s is 3200 samples (the resampler may hold back a few).
    assert abs(out.shape[1] - DURATION_S * SAMPLE_RATE_HZ) <= 32, out.shape
    # Channel k keeps its own level: same order as the file, no channel mixed into another.
    rms = np.sqrt(np.mean((out[:, 400:-400] / 32768.0) ** 2, axis=1))
    want = 0.05 * (np.arange(channels) + 1) / channels * 8 / np.sqrt(2)
    np.testing.assert_allclose(rms, want, rtol=0.05)


@pytest.mark.parametrize("fmt", list(CODECS))
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_decodes_channels_rates_and_formats(tmp_path, channels, rate, fmt):
    path = write_wav(tmp_path / f"{channels}ch-{rate}-{fmt}.wav", _tones(channels, rate), rate, fmt)
    assert probe_channels(path) == channels
    _check(_decoded(path), channels)


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("rate", [16000, 48000])
def test_decodes_plain_int16_wavs_without_a_channel_mask(tmp_path, channels, rate):
    # The files of the issue #18 report: 8 channels at 16 or 48 kHz ended in a segfault.
    path = write_plain_wav(tmp_path / f"{channels}ch.wav", _tones(channels, rate), rate)
    _check(_decoded(path), channels)


def test_the_source_yields_every_channel_of_a_16_channel_file(tmp_path):
    path = write_wav(tmp_path / "16ch.wav", _tones(16, 48000), 48000, "s32")

    async def collect() -> dict[str, int]:
        seen: dict[str, int] = {}
        async for chunk in FileSource(path, max_channels=16).chunks():
            assert chunk.pcm.dtype == np.int16
            seen[chunk.channel] = seen.get(chunk.channel, 0) + chunk.pcm.shape[0]
        return seen

    seen = asyncio.run(collect())
    assert sorted(seen, key=int) == [str(c) for c in range(16)]
    assert len(set(seen.values())) == 1


def test_non_finite_samples_are_zeroed_and_counted_once(tmp_path, caplog):
    x = _tones(2, 16000).astype(np.float32)
    x[100:110, 0] = np.nan
    x[2000, 1] = np.inf
    x[2001, 1] = -np.inf
    x[3000:3005, :] = np.nan
    path = write_wav(tmp_path / "nan.wav", x, 16000, "flt")
    with caplog.at_level(logging.WARNING, logger="emomon.streamer.sources.file"):
        out = _decoded(path)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "22 non-finite samples" in warnings[0], warnings
    # Zeroed before resampling: no full-scale spikes where the NaN and infinities were.
    assert np.abs(out).max() < 0.45 * 32768
    assert out.shape == (2, 3200)


def test_a_clean_file_gives_no_warning(tmp_path, caplog):
    path = write_wav(tmp_path / "ok.wav", _tones(2, 44100), 44100, "flt")
    with caplog.at_level(logging.WARNING, logger="emomon.streamer.sources.file"):
        _decoded(path)
    assert not caplog.records


@pytest.mark.parametrize("writer", ["ffmpeg", "stdlib"])
def test_a_truncated_wav_warns_once_and_keeps_its_audio(tmp_path, caplog, writer):
    whole = tmp_path / "whole.wav"
    if writer == "ffmpeg":
        write_wav(whole, _tones(8, 48000), 48000, "s16")
    else:
        write_plain_wav(whole, _tones(8, 48000), 48000)
    cut = tmp_path / "cut.wav"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 3])  # half the samples and a partial one
    with caplog.at_level(logging.WARNING, logger="emomon.streamer.sources.file"):
        out = _decoded(cut)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "truncated" in warnings[0], warnings
    assert "0.20 s" in warnings[0] and out.shape[0] == 8
    assert 0.08 * SAMPLE_RATE_HZ < out.shape[1] < 0.12 * SAMPLE_RATE_HZ


def test_a_truncated_flac_keeps_the_audio_before_the_cut(tmp_path, caplog):
    # FLAC's decoder fails on the cut packet; what came before it is still the recording.
    whole = tmp_path / "whole.flac"
    x = _as_format(np.tile(_tones(2, 16000), (10, 1)), "s16")  # 2 s
    with av.open(str(whole), "w") as c:
        s = c.add_stream("flac", rate=16000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 16000
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="emomon.streamer.sources.file"):
        out = _decoded(cut)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "truncated" in warnings[0], warnings
    assert out.shape[0] == 2 and 0.3 * SAMPLE_RATE_HZ < out.shape[1] < 1.9 * SAMPLE_RATE_HZ


def test_more_channels_than_the_setting_allows_is_refused(tmp_path):
    path = write_plain_wav(tmp_path / "12ch.wav", _tones(12, 16000), 16000)
    with pytest.raises(SourceError, match="source.file_max_channels"):
        FileSource(path)
    assert FileSource(path, max_channels=12).channels == 12


def test_the_cli_names_the_setting_in_one_line(tmp_path):
    path = write_plain_wav(tmp_path / "12ch.wav", _tones(12, 16000), 16000)
    r = subprocess.run(
        [sys.executable, "-m", "emomon.services", "run", "--source", f"file:{path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert "12 channels" in r.stderr and "source.file_max_channels" in r.stderr
