"""Recorded audio files, decoded with PyAV (wav, flac, mp3, ogg/opus, mp4, ...).

Each channel of the file is its own channel here, resampled to 16 kHz: a stereo call recording
with one person per side gives two speakers without any clustering. ``realtime=True`` paces
the chunks like a live source; the default is as fast as the decoder goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np

from emomon.streamer.sources.base import AudioChunk, SourceError
from emomon.streamer.utterance import SAMPLE_RATE_HZ

# 100 ms per chunk, also at real-time pace. Measured 2026-12-03 (benchmarks/bench_pipeline.py):
# 20 ms chunks like a mic or RTP cut the N=1 p95 by ~25 ms (median of 7 runs 1.01 s vs 1.035 s),
# but at N=4 the per-chunk overhead made turn detection shed windows and WER rose 0.235 -> 0.24-0.35.
CHUNK_MS = 100


def _decode(path: Path) -> Iterator[np.ndarray]:
    """Yield (channels, n) int16 blocks at 16 kHz; blocking, so run it off the event loop."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot open {path}: {e}") from e
    with container:
        if not container.streams.audio:
            raise SourceError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels or 1
        # Keep every channel (planar int16): channels are speakers here, never mix them down.
        resampler = av.AudioResampler(
            format="s16p", layout=stream.codec_context.layout, rate=SAMPLE_RATE_HZ
        )
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(channels, -1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(channels, -1)
        except (av.error.FFmpegError, ValueError) as e:
            raise SourceError(f"cannot decode {path}: {e}") from e


def probe_channels(path: str | os.PathLike[str]) -> int:
    """Number of audio channels, or a SourceError that says what is wrong with the file."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"file not found: {p}")
    if p.is_dir():
        raise SourceError(f"{p} is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise SourceError(f"{p} is empty (0 bytes)")
    try:
        with av.open(str(p)) as c:
            if not c.streams.audio:
                raise SourceError(f"{p} has no audio stream")
            return int(c.streams.audio[0].codec_context.channels or 1)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise SourceError(
            f"cannot decode {p}: not a readable audio file ({e.__class__.__name__})"
        ) from e


class FileSource:
    """An audio file replayed as a source; one channel per file channel."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        realtime: bool = False,
        chunk_ms: int | None = None,
    ):
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.realtime = realtime
        if chunk_ms is None:
            chunk_ms = CHUNK_MS
        if chunk_ms < 1:
            raise SourceError(f"chunk_ms must be >= 1, got {chunk_ms}")
        self.chunk_samples = SAMPLE_RATE_HZ * chunk_ms // 1000
        self.channels = probe_channels(self.path)
        # A mono recording may hold a whole room or a mixed call; separate channels hold one person each.
        self.multi_speaker_channels = self.channels == 1
        self._closed = asyncio.Event()

    async def close(self) -> None:
        self._closed.set()

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        blocks = _decode(self.path)
        pending = np.zeros((self.channels, 0), dtype=np.int16)
        pos = 0  # samples emitted per channel
        t0 = time.monotonic()
        t0_wall = time.time()
        done = False
        while not done and not self._closed.is_set():
            # Decode ~1 s at a time in a worker thread so the loop stays free.
            got = await asyncio.to_thread(_take, blocks, SAMPLE_RATE_HZ)
            if got is None:
                done = True
            else:
                pending = np.concatenate([pending, got], axis=1) if pending.size else got
            while pending.shape[1] >= self.chunk_samples or (done and pending.shape[1] > 0):
                if self._closed.is_set():
                    break
                n = min(self.chunk_samples, pending.shape[1])
                block, pending = pending[:, :n], pending[:, n:]
                start_s = pos / SAMPLE_RATE_HZ
                pos += n
                if self.realtime:
                    delay = t0 + pos / SAMPLE_RATE_HZ - time.monotonic()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._closed.wait(), delay)
                last = done and pending.shape[1] == 0
                # Real-time pace: the audio "happens" on the clock, whether or not the
                # consumer keeps up; as fast as possible: it is captured when read.
                wall = t0_wall + pos / SAMPLE_RATE_HZ if self.realtime else time.time()
                for ch in range(self.channels):
                    yield AudioChunk(
                        channel=str(ch),
                        start_s=start_s,
                        pcm=block[ch].copy(),
                        final=last,
                        wall_end=wall,
                    )
        if pos == 0:
            return


def _take(blocks: Iterator[np.ndarray], want: int) -> np.ndarray | None:
    """Pull at least ``want`` samples per channel from the decoder (fewer at the end; None when done)."""
    parts: list[np.ndarray] = []
    have = 0
    for b in blocks:
        parts.append(b)
        have += b.shape[1]
        if have >= want:
            break
    if not parts:
        return None
    return np.concatenate(parts, axis=1)
