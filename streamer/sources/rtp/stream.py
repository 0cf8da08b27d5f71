"""One RTP stream (one SSRC): its jitter buffer, payload decoding and 16 kHz timeline.

The receive path only pushes packets into :attr:`RtpStream.jitter`; everything here runs on
the consumer side when the buffer releases them. The timeline is built from the RTP
timestamps, not from arrival times: a lost packet or a silence-suppressed stretch becomes
zeros of the length the timestamps say, and audio that overlaps what was already played is
cut. A *segment* is a run of audio at one clock rate with a continuous sender clock; a new
one starts when the rate changes or the sender's clock jumps (a restart).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emomon.streamer.sources.base import AudioChunk
from emomon.streamer.sources.g711 import (
    StreamResampler,
    decode_alaw,
    decode_l16,
    decode_ulaw,
    to_int16,
)
from emomon.streamer.sources.jitter import JitterBuffer
from emomon.streamer.sources.sdp import PayloadFormat
from emomon.streamer.utterance import SAMPLE_RATE_HZ

STREAM_COUNTERS = (
    "packets",
    "bytes",
    "malformed",
    "late",
    "lost",
    "duplicate",
    "reordered",
    "unsupported_payload",
    "buffer_overflow",
)

_TIMESTAMP_MOD = 1 << 32

# Decoders by SDP encoding name; any other supported encoding is linear 16-bit PCM.
_DECODERS: dict[str, Callable[[bytes, int], np.ndarray]] = {
    "PCMU": lambda payload, _channels: decode_ulaw(payload),
    "PCMA": lambda payload, _channels: decode_alaw(payload),
}

# (stream time in seconds, 16 kHz samples) pieces collected before they are cut into chunks
Pieces = list[tuple[float, np.ndarray]]


@dataclass(slots=True)
class QueuedPayload:
    """What the receive path stores in the jitter buffer for one packet."""

    timestamp: int
    fmt: PayloadFormat | None  # None: a payload type we cannot decode (keeps its sequence slot)
    payload: bytes


def unwrap_timestamp(timestamp: int, previous: int | None) -> int:
    """Extend a 32-bit RTP timestamp to a monotone counter next to the ``previous`` one."""
    if previous is None:
        return timestamp
    delta = (timestamp - previous) % _TIMESTAMP_MOD
    if delta >= _TIMESTAMP_MOD // 2:
        delta -= _TIMESTAMP_MOD  # a step backwards (reordering across the wrap)
    return previous + delta


@dataclass(slots=True)
class RtpStream:
    """One SSRC: its jitter buffer, decoder state and timeline (times in monotonic seconds)."""

    ssrc: int
    channel: str
    speaker: str
    clock_offset_s: float  # this stream's time 0, counted from the SSRC's first packet ever
    first_arrival_s: float
    jitter: JitterBuffer[QueuedPayload]
    chunk_samples: int  # 16 kHz samples per emitted chunk, at most
    max_clock_jump_s: float  # a timestamp gap longer than this starts a new segment
    log_dropped: Callable[..., None]  # rate-limited DEBUG log for undecodable payloads
    last_arrival_s: float = 0.0
    bye_at_s: float | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAM_COUNTERS, 0))
    # decoder and timeline state (consumer side)
    resampler: StreamResampler | None = None
    clock_rate_hz: int = 0
    last_timestamp: int | None = None  # extended timestamp of the last decoded packet
    segment_start_timestamp: int = 0  # extended timestamp at the current segment's start
    segment_start_s: float = 0.0  # stream time of the current segment's first sample
    segment_samples_in: int = 0  # input samples fed in this segment
    segment_samples_out: int = 0  # 16 kHz samples emitted in this segment
    emitted_any: bool = False

    def stats(self) -> dict[str, int]:
        """This stream's counters, the jitter buffer's included."""
        out = dict(self.counters)
        js = self.jitter.stats
        out.update(late=js.late, lost=js.lost, duplicate=js.duplicate, reordered=js.reordered)
        out["buffer_overflow"] = js.overflow
        return out

    def position_s(self) -> float:
        """Stream time just after the last sample emitted."""
        return self.segment_start_s + self.segment_samples_out / SAMPLE_RATE_HZ

    def drain(self, now: float, *, flush: bool = False) -> list[AudioChunk]:
        """Decode what the jitter buffer releases (everything with ``flush``) into chunks."""
        pieces: Pieces = []
        for _, queued in self.jitter.pop_ready(now, flush=flush):
            if queued.fmt is not None:
                self._decode_into(queued, queued.fmt, now, pieces)
        return self._to_chunks(pieces)

    def finish(self, now: float) -> list[AudioChunk]:
        """Release everything buffered and the resampler's tail; the last chunk is final."""
        out = self.drain(now, flush=True)
        pieces: Pieces = []
        self._flush_resampler(pieces)
        out.extend(self._to_chunks(pieces, final=True))
        return out

    def _decode_into(
        self, queued: QueuedPayload, fmt: PayloadFormat, now: float, pieces: Pieces
    ) -> None:
        decode = _DECODERS.get(fmt.encoding, decode_l16)
        try:
            pcm = decode(queued.payload, fmt.channels)
        except ValueError as e:
            self.counters["malformed"] += 1
            self.log_dropped("%s: undecodable payload: %s", self.channel, e)
            return
        ts = unwrap_timestamp(queued.timestamp, self.last_timestamp)
        if self.resampler is None or fmt.clock_rate_hz != self.clock_rate_hz:
            self._start_segment(ts, fmt.clock_rate_hz, self.position_s(), pieces)
        gap = (ts - self.segment_start_timestamp) - self.segment_samples_in
        max_fill = int(self.max_clock_jump_s * self.clock_rate_hz)
        if gap > max_fill or gap < -max_fill:
            # The sender jumped its clock (restart, long silence suppression): start a new
            # segment at whichever is later, the audio emitted so far or the arrival time.
            arrival_s = self.clock_offset_s + now - self.first_arrival_s
            self._start_segment(ts, self.clock_rate_hz, max(self.position_s(), arrival_s), pieces)
            gap = 0
        if gap > 0:
            # Lost packets or silence suppression (DTX): the timestamps say how long.
            self._feed(np.zeros(gap, dtype=np.int16), pieces)
        elif gap < 0:
            pcm = pcm[-gap:]  # overlaps audio already played: keep only the new part
        self.last_timestamp = ts
        if pcm.size:
            self._feed(pcm, pieces)

    def _start_segment(self, ts: int, rate_hz: int, start_s: float, pieces: Pieces) -> None:
        if self.resampler is not None:
            self._flush_resampler(pieces)
            start_s = max(start_s, self.position_s())
        self.resampler = StreamResampler(rate_hz, SAMPLE_RATE_HZ)
        self.clock_rate_hz = rate_hz
        self.segment_start_timestamp = ts
        self.segment_start_s = start_s
        self.segment_samples_in = 0
        self.segment_samples_out = 0

    def _flush_resampler(self, pieces: Pieces) -> None:
        if self.resampler is None:
            return
        tail = self.resampler.flush()
        if tail.size:
            pieces.append((self.position_s(), to_int16(tail)))
            self.segment_samples_out += tail.size

    def _feed(self, pcm: np.ndarray, pieces: Pieces) -> None:
        assert self.resampler is not None
        self.segment_samples_in += pcm.shape[0]
        if self.resampler.identity:
            out = pcm.astype(np.int16, copy=False)
        else:
            out = to_int16(self.resampler.process(pcm))
        if out.size:
            pieces.append((self.position_s(), out))
            self.segment_samples_out += out.size

    def _to_chunks(self, pieces: Pieces, final: bool = False) -> list[AudioChunk]:
        """Merge contiguous pieces and cut them into chunks of at most ``chunk_samples``."""
        out: list[AudioChunk] = []
        n = self.chunk_samples
        for start, pcm in _merge_contiguous(pieces):
            for i in range(0, pcm.size, n):
                out.append(
                    AudioChunk(
                        channel=self.channel,
                        start_s=self.clock_offset_s + start + i / SAMPLE_RATE_HZ,
                        pcm=pcm[i : i + n],
                        speaker=self.speaker,
                    )
                )
        if final:
            if not out:
                # Nothing left to say (16 kHz L16 has no filter tail): a short silence carries the flag.
                silence = np.zeros(n, dtype=np.int16)
                start_s = self.clock_offset_s + self.position_s()
                out.append(AudioChunk(self.channel, start_s, silence, self.speaker))
            last = out[-1]
            out[-1] = AudioChunk(last.channel, last.start_s, last.pcm, last.speaker, final=True)
        if out:
            self.emitted_any = True
        return out


def _merge_contiguous(pieces: Pieces) -> Pieces:
    """Join pieces where one starts (within half a sample) where the previous one ends."""
    merged: Pieces = []
    for start, pcm in pieces:
        if merged:
            m_start, m_pcm = merged[-1]
            if abs(m_start + m_pcm.size / SAMPLE_RATE_HZ - start) < 0.5 / SAMPLE_RATE_HZ:
                merged[-1] = (m_start, np.concatenate([m_pcm, pcm]))
                continue
        merged.append((start, pcm))
    return merged
