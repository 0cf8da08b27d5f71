"""Recorded audio files, decoded with PyAV (wav, flac, mp3, ogg/opus, mp4, ...).

Each channel of the file is its own channel here, resampled to 16 kHz: a stereo call recording
with one person per side gives two speakers without any clustering. ``realtime=True`` paces
the chunks like a live source; the default is as fast as the decoder goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np

from emomon.streamer.config import FILE_MAX_CHANNELS
from emomon.streamer.sources.base import AudioChunk, SourceError
from emomon.streamer.utterance import SAMPLE_RATE_HZ

# 100 ms per chunk, also at real-time pace. Measured 2026-12-03 (benchmarks/bench_pipeline.py):
# 20 ms chunks like a mic or RTP cut the N=1 p95 by ~25 ms (median of 7 runs 1.01 s vs 1.035 s),
# but at N=4 the per-chunk overhead made turn detection shed windows and WER rose 0.235 -> 0.24-0.35.
CHUNK_MS = 100

log = logging.getLogger(__name__)


def _decode(path: Path, channels: int) -> Iterator[np.ndarray]:
    """Yield (channels, n) int16 blocks at 16 kHz; blocking, so run it off the event loop.

    Every frame goes through two conversions, both to *packed* (interleaved) samples with the
    file's own channel layout, so no channel is ever mixed into another (channels are speakers):

    1. to float32 at the file's rate, where NaN and +-inf samples are set to 0 and counted. This
       has to happen before rate conversion, whose filter would spread one NaN over its
       neighbours (and a NaN cast to int16 is undefined).
    2. to int16 at 16 kHz.

    Why packed, never planar: PyAV (checked with 18.1) finds a planar frame's planes by walking
    ``AVFrame.extended_data`` until a NULL pointer. With exactly 8 channels that array is the
    frame's inline ``data[8]``, so the walk runs on into ``linesize[0]`` and returns a ninth
    "plane" at a bogus address, which ``to_ndarray()`` then reads: the segmentation fault of
    issue #18 (and with more than 8 channels the walk reads past a heap array). A packed frame
    has one plane and ``data[1]`` is NULL, so the walk stops where it should, for any channel
    count. A file that ends early warns once (see :func:`_promised_samples`); so do cleaned
    samples, with their count.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot open {path}: {e}") from e
    with container:
        if not container.streams.audio:
            raise SourceError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        promised = _promised_samples(path, stream)
        convert: _Converter | None = None
        try:
            for frame in container.decode(stream):
                if convert is None:
                    convert = _Converter(frame, channels, path)
                yield from convert.push(frame)
        except (av.error.FFmpegError, ValueError) as e:
            if convert is None or convert.decoded == 0:
                raise SourceError(f"cannot decode {path}: {e}") from e
            # Audio came out before the error: keep it, as for any file that ends early.
            log.warning(
                "%s: cannot decode past %.2f s (%s); the file looks truncated, "
                "using the audio before that",
                path,
                convert.decoded / convert.rate,
                e,
            )
            promised = None
        if convert is None:
            return
        try:
            yield from convert.flush()
        except (av.error.FFmpegError, ValueError) as e:
            raise SourceError(f"cannot decode {path}: {e}") from e
        if convert.cleaned:
            log.warning(
                "%s: %d non-finite samples (NaN or infinity) were set to 0",
                path,
                convert.cleaned,
            )
        if promised is not None and convert.decoded < promised:
            log.warning(
                "%s is truncated: its header promises %.2f s, the data holds %.2f s",
                path,
                promised / convert.rate,
                convert.decoded / convert.rate,
            )


class _Converter:
    """The two conversions of :func:`_decode` for one file, with their counts."""

    def __init__(self, first: av.AudioFrame, channels: int, path: Path):
        # The first frame's layout is the file's: keep it exactly (same channels, same order).
        self.layout = av.AudioLayout(first.layout)
        if self.layout.nb_channels != channels:
            raise SourceError(
                f"cannot decode {path}: it declares {channels} channels but its audio "
                f"has {self.layout.nb_channels}"
            )
        self.channels = channels
        self.rate = first.sample_rate
        self._to_float = av.AudioResampler(format="flt", layout=self.layout, rate=self.rate)
        self._to_out = av.AudioResampler(format="s16", layout=self.layout, rate=SAMPLE_RATE_HZ)
        self.decoded = 0  # samples per channel at the file's rate
        self.cleaned = 0  # non-finite samples set to 0

    def push(self, frame: av.AudioFrame) -> Iterator[np.ndarray]:
        for f in self._to_float.resample(frame):
            yield from self._out(self._clean(f))

    def flush(self) -> Iterator[np.ndarray]:
        for f in self._to_float.resample(None):
            yield from self._out(self._clean(f))
        yield from self._out(None)

    def _clean(self, frame: av.AudioFrame) -> av.AudioFrame:
        x = frame.to_ndarray()  # (1, n * channels) float32, interleaved
        self.decoded += x.shape[1] // self.channels
        finite = np.isfinite(x)
        if finite.all():
            return frame
        self.cleaned += int(x.size - np.count_nonzero(finite))
        clean = av.AudioFrame.from_ndarray(
            np.where(finite, x, np.float32(0)), format="flt", layout=self.layout
        )
        clean.sample_rate = self.rate
        clean.pts = frame.pts
        clean.time_base = frame.time_base
        return clean

    def _out(self, frame: av.AudioFrame | None) -> Iterator[np.ndarray]:
        for out in self._to_out.resample(frame):
            # (1, n * channels) interleaved -> (channels, n); the copy detaches it from the frame.
            yield out.to_ndarray().reshape(-1, self.channels).T.copy()


def _promised_samples(path: Path, stream: av.AudioStream) -> int | None:
    """Samples per channel the file's header promises, where the header says so exactly.

    FFmpeg clamps a WAV's duration to the bytes present, so a truncated WAV looks whole: its
    ``data`` chunk size is read here instead. FLAC's STREAMINFO holds the exact total. Other
    formats (mp3, ogg, ...) may only estimate their length, so they are not checked.
    """
    if stream.codec_context.name.startswith("pcm_"):
        return _wav_data_samples(path)
    if stream.codec_context.name == "flac" and stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * stream.rate)
    return None


def _wav_data_samples(path: Path) -> int | None:
    """Sample frames the RIFF/WAVE ``data`` chunk declares, or None (not a WAV, or unknown size)."""
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        for _ in range(64):  # a WAV has a handful of chunks; stop on anything stranger
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                # 0 and 0xFFFFFFFF mark a stream written without knowing its length.
                if block_align == 0 or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            padded = size + (size & 1)  # chunks are padded to an even size
            if cid == b"fmt ":
                body = fh.read(padded)
                if len(body) >= 14:
                    block_align = struct.unpack("<H", body[12:14])[0]
            else:
                fh.seek(padded, os.SEEK_CUR)
    return None


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
        max_channels: int = FILE_MAX_CHANNELS,
    ):
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.realtime = realtime  # chunks' wall_end are playout times (else: read times)
        self.origin_wall: float | None = None  # wall-clock time of the file's start (session 0)
        if chunk_ms is None:
            chunk_ms = CHUNK_MS
        if chunk_ms < 1:
            raise SourceError(f"chunk_ms must be >= 1, got {chunk_ms}")
        self.chunk_samples = SAMPLE_RATE_HZ * chunk_ms // 1000
        self.channels = probe_channels(self.path)
        if self.channels > max_channels:
            # Each file channel becomes a speaker; dozens of them is more often a multitrack
            # or ambisonic recording than a call, so it takes a deliberate setting.
            raise SourceError(
                f"{self.path} has {self.channels} channels, more than "
                f"source.file_max_channels ({max_channels}); each channel becomes a speaker, "
                f"raise it with --set source.file_max_channels={self.channels} if that is meant"
            )
        # A mono recording may hold a whole room or a mixed call; separate channels hold one person each.
        self.multi_speaker_channels = self.channels == 1
        self._closed = asyncio.Event()

    async def close(self) -> None:
        self._closed.set()

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        blocks = _decode(self.path, self.channels)
        pending = np.zeros((self.channels, 0), dtype=np.int16)
        pos = 0  # samples emitted per channel
        t0 = time.monotonic()
        t0_wall = time.time()
        self.origin_wall = t0_wall
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
