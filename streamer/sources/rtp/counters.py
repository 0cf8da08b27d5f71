"""What an RTP receiver counts: its totals, the counters of ended streams, dropped datagrams.

Streams keep their own counters while active (:meth:`RtpStream.stats`); when one ends its
counters are added here, so totals over the receiver's life stay exact without keeping every
stream forever.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from emomon.streamer.sources.rtp.stream import STREAM_COUNTERS, RtpStream

ENDED_STATS_KEPT = 256  # ended streams whose counters stats_by_ssrc() still reports
RECEIVER_COUNTERS = (
    "packets",
    "bytes",
    "malformed",
    "rtcp",
    "unsupported_payload",
    "rejected_source",
    "foreign_source",
    "foreign_bye",
    "over_source_cap",
    "over_stream_cap",
    "streams_started",
    "streams_resumed",
    "streams_unconfirmed",
    "streams_ended",
    "streams_ended_bye",
)
_JITTER_COUNTERS = (
    "late",
    "lost",
    "duplicate",
    "reordered",
    "buffer_overflow",
    "comfort_noise",
    "telephone_event",
)


class ReceiverCounters:
    """Totals of one receiver plus the summed counters of its ended streams."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(RECEIVER_COUNTERS, 0)
        self.ended_sum = dict.fromkeys(STREAM_COUNTERS, 0)
        self._ended_by_channel: OrderedDict[str, dict[str, int]] = OrderedDict()

    def stream_ended(self, stream: RtpStream, *, byed: bool) -> dict[str, int]:
        """Fold an ended stream's counters in; return them (for the log line)."""
        st = stream.stats()
        for k in STREAM_COUNTERS:
            self.ended_sum[k] += st[k]
        self._ended_by_channel[stream.channel] = st
        if len(self._ended_by_channel) > ENDED_STATS_KEPT:
            self._ended_by_channel.popitem(last=False)
        self.totals["streams_ended"] += 1
        if byed:
            self.totals["streams_ended_bye"] += 1
        return st

    def summary(self, active: Iterable[RtpStream]) -> dict[str, int]:
        """Totals over the receiver's life, ended and ``active`` streams included."""
        out = dict(self.totals)
        per = dict(self.ended_sum)
        n_active = 0
        for stream in active:
            n_active += 1
            for k, v in stream.stats().items():
                per[k] += v
        for k in _JITTER_COUNTERS:
            out[k] = per[k]
        out["malformed"] += per["malformed"]
        out["unsupported_payload"] += per["unsupported_payload"]
        out["streams_active"] = n_active
        return out

    def by_channel(self, active: Iterable[RtpStream]) -> dict[str, dict[str, int]]:
        """Per-stream counters keyed by channel id: ``active`` and recently ended streams."""
        out = {k: dict(v) for k, v in self._ended_by_channel.items()}
        for stream in active:
            out[stream.channel] = stream.stats()
        return out


class RateLimitedLog:
    """Log a repeated DEBUG message at most once per ``interval_s``, with the count in between.

    Garbage datagrams can arrive by the thousand per second; one line a second says as much.
    """

    def __init__(
        self, logger: logging.Logger, interval_s: float = 1.0, level: int = logging.DEBUG
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.level = level
        self._last = -1e9
        self._suppressed = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        self.logger.log(self.level, msg + extra, *args)
