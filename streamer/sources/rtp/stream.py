"""One RTP stream (one SSRC): its jitter buffer, payload decoding and 16 kHz timeline.

The receive path only pushes packets into :attr:`RtpStream.jitter`; everything here runs on
the consumer side when the buffer releases them. The timeline is built from the RTP
timestamps, not from arrival times: a lost packet, a silence-suppressed stretch (DTX) or comfort
noise (CN, RFC 3389) becomes zeros of the length the timestamps say, and audio that overlaps
what was already played is cut. When nothing arrives, :meth:`RtpStream.drain` still moves the
timeline on with silence once the :class:`~.playout.PlayoutClock` says the media time is due,
so the segmenter sees an utterance end when it ends, not when the next packet comes (#15).

A *segment* is a run of audio at one rate with a continuous sender clock; a new one starts when
the rate changes or the sender's clock jumps (a restart). Every chunk carries ``wall_end``: when
its last sample arrived (the packet's arrival, or for silence the time it was due), so latency
is measured from arrival.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emomon.streamer.sources.base import AudioChunk
from emomon.streamer.sources.g711 import StreamResampler, to_int16
from emomon.streamer.sources.jitter import JitterBuffer
from emomon.streamer.sources.rtp.codecs import PayloadDecoder, make_decoder
from emomon.streamer.sources.rtp.playout import PlayoutClock
from emomon.streamer.sources.sdp import PayloadFormat
from emomon.streamer.utterance import SAMPLE_RATE_HZ

log = logging.getLogger("emomon.streamer.sources.rtp.source")

ARRIVALS_KEPT = 1500  # per stream: ~30 s of 20 ms packets of speech (see RtpStream.arrivals)

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
    "comfort_noise",
    "telephone_event",
)

# (stream time in seconds, 16 kHz samples, monotonic arrival time of the last sample)
Pieces = list[tuple[float, np.ndarray, float]]


@dataclass(slots=True)
class QueuedPayload:
    """What the receive path stores in the jitter buffer for one packet."""

    timestamp: int  # extended (unwrapped) RTP timestamp
    fmt: PayloadFormat | None  # None: a payload type we cannot decode (keeps its sequence slot)
    payload: bytes
    arrival_s: float = 0.0  # monotonic


@dataclass(frozen=True, slots=True)
class ClockState:
    """Where a stream's media clock stood when it ended, so a resumed SSRC keeps its times."""

    ref_timestamp: int  # an extended RTP timestamp (low 32 bits are the wire value) ...
    ref_s: float  # ... and its session time
    clock_rate_hz: int
    end_s: float  # session time just after the last sample emitted
    ended_s: float  # monotonic time the stream ended

    def session_time(self, timestamp: int, now_s: float, tolerance_s: float) -> float | None:
        """Session time of a new packet's ``timestamp``, if it continues this clock: the media
        time that passed must agree with the wall time that did (else the sender restarted)."""
        d = (timestamp - self.ref_timestamp) % (1 << 32)
        t = self.ref_s + d / self.clock_rate_hz
        elapsed = now_s - self.ended_s
        media_gap = t - self.end_s
        if media_gap < -tolerance_s or abs(media_gap - elapsed) > tolerance_s + 0.05 * elapsed:
            return None
        return max(t, self.end_s)


@dataclass(slots=True)
class RtpStream:
    """One SSRC: its jitter buffer, decoder state and timeline (times in monotonic seconds)."""

    ssrc: int
    channel: str
    speaker: str
    clock_offset_s: float  # session time of this stream's time 0
    first_arrival_s: float
    jitter: JitterBuffer[QueuedPayload]
    chunk_samples: int  # 16 kHz samples per emitted chunk, at most
    max_clock_jump_s: float  # a timestamp gap longer than this starts a new segment
    log_dropped: Callable[..., None]  # rate-limited DEBUG log for undecodable payloads
    last_arrival_s: float = 0.0
    bye_at_s: float | None = None
    source_addr: tuple = ()  # (host, port) of the first packet: it owns the SSRC (#18)
    wall_offset_s: float = 0.0  # time.time() - time.monotonic(), for chunks' wall_end
    confirmed: bool = False  # past probation (RFC 3550 A.1): sequential packets seen
    probation_next: int | None = None
    probation_left: int = 2
    warned: bool = False  # the one WARNING about an undecodable payload was given
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAM_COUNTERS, 0))
    playout: PlayoutClock = field(default_factory=lambda: PlayoutClock(8000, 1.0))
    # decoder and timeline state (consumer side)
    decoders: dict[PayloadFormat, PayloadDecoder] = field(default_factory=dict)
    resampler: StreamResampler | None = None
    clock_rate_hz: int = 0
    ratio: float = 1.0  # decoded samples per RTP clock tick (G.722: 2)
    segment_start_timestamp: int = 0  # extended timestamp at the current segment's start
    segment_start_s: float = 0.0  # stream time of the current segment's first sample
    segment_samples_in: int = 0  # decoded-rate samples fed in this segment
    segment_samples_out: int = 0  # 16 kHz samples emitted in this segment
    last_piece_arrival_s: float = 0.0
    emitted_any: bool = False
    # (session time where a decoded packet's audio starts, its arrival): when speech arrived
    arrivals: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=ARRIVALS_KEPT)
    )

    def stats(self) -> dict[str, int]:
        """This stream's counters, the jitter buffer's included."""
        out = dict(self.counters)
        js = self.jitter.stats
        out.update(lost=js.lost, duplicate=js.duplicate, reordered=js.reordered)
        out["late"] = js.late + self.counters["late"]
        out["buffer_overflow"] = js.overflow
        return out

    def position_s(self) -> float:
        """Stream time just after the last sample emitted."""
        return self.segment_start_s + self.segment_samples_out / SAMPLE_RATE_HZ

    def clock_state(self, now_s: float) -> ClockState | None:
        """The media clock at the end of the stream (None before any audio was decoded)."""
        if self.resampler is None:
            return None
        return ClockState(
            self.segment_start_timestamp,
            self.clock_offset_s + self.segment_start_s,
            self.clock_rate_hz,
            self.clock_offset_s + self.position_s(),
            now_s,
        )

    def drain(
        self, now: float, *, flush: bool = False, fill_s: float | None = None
    ) -> list[AudioChunk]:
        """Decode what the jitter buffer releases (everything with ``flush``) into chunks.

        ``fill_s``: the playout window; when given and nothing is waiting in the buffer, the
        media time that is due by ``now`` and did not come becomes silence.
        """
        pieces: Pieces = []
        for _, queued in self.jitter.pop_ready(now, flush=flush):
            if queued.fmt is not None:
                self._decode_into(queued, queued.fmt, pieces)
        if fill_s is not None and not len(self.jitter):
            self._fill(now, fill_s, pieces)
        return self._to_chunks(pieces)

    def fill_deadline(self, window_s: float) -> float | None:
        """When the next chunk of silence becomes due if nothing arrives (None: nothing to fill)."""
        if self.resampler is None or len(self.jitter):
            return None
        ticks = self.segment_start_timestamp + self.segment_samples_in / self.ratio
        step = self.chunk_samples / SAMPLE_RATE_HZ * self.clock_rate_hz
        return self.playout.time_of(int(ticks + step), window_s)

    def finish(self, now: float) -> list[AudioChunk]:
        """Release everything buffered and the resampler's tail; the last chunk is final."""
        out = self.drain(now, flush=True)
        pieces: Pieces = []
        self._flush_resampler(pieces)
        out.extend(self._to_chunks(pieces, final=True))
        return out

    def _decode_into(self, queued: QueuedPayload, fmt: PayloadFormat, pieces: Pieces) -> None:
        if fmt.encoding == "CN":
            # Comfort noise: silence from its timestamp on (the level it carries is not speech).
            self.counters["comfort_noise"] += 1
            if self.resampler is not None:
                self._place(queued.timestamp, queued.arrival_s, pieces)
            return
        if fmt.encoding == "TELEPHONE-EVENT":
            self.counters["telephone_event"] += 1  # DTMF (RFC 4733): no audio of its own
            return
        decoder = self.decoders.get(fmt)
        try:
            if decoder is None:
                decoder = self.decoders[fmt] = make_decoder(fmt)
            pcm = decoder(queued.payload)
        except (ValueError, KeyError) as e:
            self.counters["malformed"] += 1
            if not self.warned:  # once per stream at the default level (#15), then DEBUG
                self.warned = True
                log.warning(
                    "RTP stream %s (%s): undecodable %s payload (%s); such packets are dropped "
                    "and counted as malformed",
                    self.channel,
                    self.speaker,
                    fmt.encoding,
                    e,
                )
            else:
                self.log_dropped("%s: undecodable %s payload: %s", self.channel, fmt.encoding, e)
            return
        ts = queued.timestamp
        if (
            self.resampler is None
            or fmt.audio_rate_hz != self.resampler.in_rate
            or fmt.clock_rate_hz != self.clock_rate_hz
        ):
            self._start_segment(ts, fmt, self.position_s(), pieces)
        gap = self._place(ts, queued.arrival_s, pieces)
        if gap < 0:
            if -gap >= pcm.size:
                self.counters["late"] += 1  # its media time was already played as silence
                return
            pcm = pcm[-gap:]  # overlaps audio already played: keep only the new part
        if pcm.size:
            assert self.resampler is not None
            start = self.segment_start_s + self.segment_samples_in / self.resampler.in_rate
            self.arrivals.append((self.clock_offset_s + start, queued.arrival_s))
            self._feed(pcm, queued.arrival_s, pieces)

    def arrival_of(self, t_s: float) -> float | None:
        """When the audio at session time ``t_s`` arrived (monotonic): the arrival of the packet
        holding it, or for a time in silence, of the last packet before it (all speech up to
        ``t_s`` was here then). None when it is older than what is kept."""
        for start, arrival in reversed(self.arrivals):
            if start <= t_s + 1e-9:
                return arrival
        return None

    def _place(self, ts: int, arrival_s: float, pieces: Pieces) -> int:
        """Move the timeline to timestamp ``ts``: silence for a gap, a new segment for a jump.
        Returns the samples by which ``ts`` lies *behind* what was emitted (negative), else 0."""
        gap = int(round((ts - self.segment_start_timestamp) * self.ratio)) - self.segment_samples_in
        max_fill = int(self.max_clock_jump_s * self.resampler.in_rate) if self.resampler else 0
        if gap > max_fill or gap < -max_fill:
            # The sender jumped its clock (restart): a new segment at whichever is later, the
            # audio emitted so far or the arrival time.
            assert self.resampler is not None
            start_s = max(self.position_s(), arrival_s - self.first_arrival_s)
            rate = self.resampler.in_rate
            self._start_segment_at(ts, self.clock_rate_hz, rate, start_s, pieces)
            return 0
        if gap > 0:
            # Lost packets or silence suppression (DTX): the timestamps say how long.
            self._feed(np.zeros(gap, dtype=np.int16), arrival_s, pieces)
            return 0
        return gap

    def _fill(self, now: float, window_s: float, pieces: Pieces) -> None:
        if self.resampler is None:
            return
        due = self.playout.due_ticks(now, window_s)
        if due is None:
            return
        n = int((due - self.segment_start_timestamp) * self.ratio) - self.segment_samples_in
        n = min(n, int(self.max_clock_jump_s * self.resampler.in_rate))
        if n >= self.resampler.in_rate * self.chunk_samples // SAMPLE_RATE_HZ:
            arrival = self.playout.arrival_of(due)
            self._feed(np.zeros(n, dtype=np.int16), arrival if arrival is not None else now, pieces)

    def _start_segment(self, ts: int, fmt: PayloadFormat, start_s: float, pieces: Pieces) -> None:
        self._start_segment_at(ts, fmt.clock_rate_hz, fmt.audio_rate_hz, start_s, pieces)

    def _start_segment_at(
        self, ts: int, clock_rate_hz: int, audio_rate_hz: int, start_s: float, pieces: Pieces
    ) -> None:
        if self.resampler is not None:
            self._flush_resampler(pieces)
            start_s = max(start_s, self.position_s())
        self.resampler = StreamResampler(audio_rate_hz, SAMPLE_RATE_HZ)
        self.clock_rate_hz = clock_rate_hz
        self.ratio = audio_rate_hz / clock_rate_hz
        self.segment_start_timestamp = ts
        self.segment_start_s = start_s
        self.segment_samples_in = 0
        self.segment_samples_out = 0

    def _flush_resampler(self, pieces: Pieces) -> None:
        if self.resampler is None:
            return
        tail = self.resampler.flush()
        if tail.size:
            pieces.append((self.position_s(), to_int16(tail), self.last_piece_arrival_s))
            self.segment_samples_out += tail.size

    def _feed(self, pcm: np.ndarray, arrival_s: float, pieces: Pieces) -> None:
        assert self.resampler is not None
        self.segment_samples_in += pcm.shape[0]
        self.last_piece_arrival_s = arrival_s
        if self.resampler.identity:
            out = pcm.astype(np.int16, copy=False)
        else:
            out = to_int16(self.resampler.process(pcm))
        if out.size:
            pieces.append((self.position_s(), out, arrival_s))
            self.segment_samples_out += out.size

    def _to_chunks(self, pieces: Pieces, final: bool = False) -> list[AudioChunk]:
        """Merge contiguous pieces and cut them into chunks of at most ``chunk_samples``."""
        out: list[AudioChunk] = []
        n = self.chunk_samples
        off = self.wall_offset_s
        for start, pcm, marks in _merge_contiguous(pieces):
            k = 0
            for i in range(0, pcm.size, n):
                end = min(i + n, pcm.size)
                while k < len(marks) - 1 and marks[k][0] < end:
                    k += 1
                out.append(
                    AudioChunk(
                        channel=self.channel,
                        start_s=self.clock_offset_s + start + i / SAMPLE_RATE_HZ,
                        pcm=pcm[i:end],
                        speaker=self.speaker,
                        wall_end=marks[k][1] + off,
                    )
                )
        if final:
            if not out:
                # Nothing left to say (16 kHz L16 has no filter tail): a short silence carries the flag.
                silence = np.zeros(n, dtype=np.int16)
                start_s = self.clock_offset_s + self.position_s()
                wall = (self.last_piece_arrival_s or self.last_arrival_s) + off
                out.append(AudioChunk(self.channel, start_s, silence, self.speaker, wall_end=wall))
            last = out[-1]
            out[-1] = AudioChunk(
                last.channel,
                last.start_s,
                last.pcm,
                last.speaker,
                final=True,
                wall_end=last.wall_end,
            )
        if out:
            self.emitted_any = True
        return out


def _merge_contiguous(pieces: Pieces) -> list[tuple[float, np.ndarray, list[tuple[int, float]]]]:
    """Join pieces where one starts (within half a sample) where the previous one ends; each
    merged run keeps ``(end sample index, arrival)`` marks of the pieces it is made of."""
    merged: list[tuple[float, np.ndarray, list[tuple[int, float]]]] = []
    for start, pcm, arrival in pieces:
        if merged:
            m_start, m_pcm, marks = merged[-1]
            if abs(m_start + m_pcm.size / SAMPLE_RATE_HZ - start) < 0.5 / SAMPLE_RATE_HZ:
                size = m_pcm.size + pcm.size
                marks.append((size, arrival))
                merged[-1] = (m_start, np.concatenate([m_pcm, pcm]), marks)
                continue
        merged.append((start, pcm, [(pcm.size, arrival)]))
    return merged
