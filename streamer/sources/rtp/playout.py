"""The media clock of one stream as it arrives: by when should RTP timestamp T have been here?

Real phones stop sending during silence (DTX, RFC 3551 §4.1; or a comfort-noise packet,
RFC 3389, then nothing), and a stream may stop without a BYE. Audio time must still pass for
the segmenter, or an utterance that ends before a gap is closed only when packets resume (issue
#15). So the receiver anchors each stream's media clock on the newest media it received — the
highest timestamp ``T_max`` and when it arrived, ``t_max`` — and at local time ``now`` every
timestamp up to ``T_max + (now - t_max - window) * clock`` has had its chance to arrive: what did
not come by then is silence.

Anchoring on the newest packet (rather than on, say, the fastest path ever seen) makes no
assumption about the sender's clock: one that drifts is never judged late while its packets
keep coming. Senders that send in bursts (ffmpeg ``-re`` sends 128 ms at a time) or networks
with jitter deliver the next packet later than its media time says; the clock keeps the recent
peak of that lateness (:attr:`PlayoutClock.spread_s`, decaying by :data:`SPREAD_DECAY` per
second from a cautious :data:`INITIAL_SPREAD_S`) and waits ``window + spread`` before it declares media silent. A silence-suppressed gap
adds nothing to it: the timestamps jump by as much as the arrival times. A timestamp that jumps
back by more than ``max_jump_s`` (a sender restart) re-anchors the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

_TS_MOD = 1 << 32
SPREAD_DECAY = 0.05  # seconds of spread forgotten per second
MAX_SPREAD_S = 1.0  # lateness beyond this is a stall or a gap, not jitter
INITIAL_SPREAD_S = 0.2  # until a stream's pacing is known (it decays unless packets confirm it)


@dataclass(slots=True)
class PlayoutClock:
    """Anchor of one stream's media clock (times: monotonic seconds; media: RTP ticks)."""

    clock_rate_hz: int
    max_jump_s: float  # a step back in timestamps this far re-anchors the clock
    newest_ts: int | None = None  # highest extended timestamp received ...
    newest_arrival_s: float = 0.0  # ... and when it arrived
    spread_s: float = INITIAL_SPREAD_S  # recent peak lateness of a packet after its predecessor
    _last_ts: int | None = None  # extended timestamp of the last packet (for wrap-around)

    def observe(self, timestamp: int, arrival_s: float, clock_rate_hz: int) -> int:
        """Account for one arriving packet of audio (or comfort noise); returns its extended
        timestamp."""
        ext = self.extend(timestamp)
        if clock_rate_hz != self.clock_rate_hz:
            self.clock_rate_hz, self.newest_ts = clock_rate_hz, None
        if self.newest_ts is not None and ext > self.newest_ts:
            waited = arrival_s - self.newest_arrival_s
            late = waited - (ext - self.newest_ts) / self.clock_rate_hz
            decayed = self.spread_s - SPREAD_DECAY * waited
            self.spread_s = min(MAX_SPREAD_S, max(late, decayed, 0.0))
        if (
            self.newest_ts is None
            or ext > self.newest_ts
            or self.newest_ts - ext > self.max_jump_s * self.clock_rate_hz
        ):
            self.newest_ts, self.newest_arrival_s = ext, arrival_s
        return ext

    def extend(self, timestamp: int) -> int:
        """A 32-bit timestamp extended next to the last one seen (wrap-around, RFC 3550 A.1)."""
        if self._last_ts is None:
            ext = timestamp
        else:
            delta = (timestamp - self._last_ts) % _TS_MOD
            if delta >= _TS_MOD // 2:
                delta -= _TS_MOD
            ext = self._last_ts + delta
        self._last_ts = ext
        return ext

    def due_ticks(self, now_s: float, window_s: float) -> int | None:
        """The extended timestamp up to which media should have arrived by ``now_s``."""
        if self.newest_ts is None:
            return None
        wait = window_s + self.spread_s
        return self.newest_ts + int((now_s - self.newest_arrival_s - wait) * self.clock_rate_hz)

    def arrival_of(self, ext_ts: float) -> float | None:
        """When media time ``ext_ts`` (ticks) arrived, or would have after the newest packet."""
        if self.newest_ts is None:
            return None
        return self.newest_arrival_s + (ext_ts - self.newest_ts) / self.clock_rate_hz

    def time_of(self, ext_ts: float, window_s: float) -> float | None:
        """Local time at which ``ext_ts`` becomes due (inverse of :meth:`due_ticks`)."""
        if self.newest_ts is None:
            return None
        wait = window_s + self.spread_s
        return self.newest_arrival_s + wait + (ext_ts - self.newest_ts) / self.clock_rate_hz


__all__ = ["PlayoutClock"]
