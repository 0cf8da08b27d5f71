"""What every audio source yields, and the protocol a source implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from emomon.streamer.utterance import SAMPLE_RATE_HZ


class SourceError(RuntimeError):
    """A source cannot be opened or read (missing file, corrupt data, no device, bad URL)."""


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A run of 16 kHz mono int16 samples from one channel.

    ``channel`` names the channel (``"0"``, ``"1"`` for file channels, an SSRC for RTP);
    ``start_s`` is the stream time of the first sample; ``speaker`` is set when the source
    knows who is talking on this channel (one person per channel), else ``None`` and the
    speaker attribution stage decides. ``wall_end`` is the wall-clock time (``time.time()``) at
    which the chunk's last sample was captured, when the source knows it (live sources and
    real-time replay); latency is measured from it, so time a chunk waits in a backlog counts.
    """

    channel: str
    start_s: float
    pcm: np.ndarray = field(repr=False)  # (n,) int16 at 16 kHz
    speaker: str | None = None
    final: bool = False  # the channel ends after this chunk
    wall_end: float | None = None  # capture time of the last sample (None: unknown)

    @property
    def end_s(self) -> float:
        return self.start_s + self.pcm.shape[0] / SAMPLE_RATE_HZ


@runtime_checkable
class AudioSource(Protocol):
    """A live or recorded audio source. ``chunks()`` never blocks the event loop.

    Optional attributes the pipeline reads with defaults (issue #15): ``realtime`` (default
    True) says whether ``wall_end`` is when the audio arrived (live capture, RTP, real-time
    replay) — only then do events claim a latency; ``origin_wall`` (default None) is the
    wall-clock time of the session's time 0 (RTP: the first packet; files: the file start).
    """

    name: str
    multi_speaker_channels: (
        bool  # True when one channel may carry several people (room mic, mixed call)
    )

    def chunks(self) -> AsyncIterator[AudioChunk]: ...

    async def close(self) -> None: ...
