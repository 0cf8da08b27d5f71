"""The streams of one receiver and who may own them (issues #15, #18).

:class:`StreamTable` decides which SSRCs become streams and keeps what outlives a stream:

* **probation** (RFC 3550 A.1): a new SSRC counts once :data:`PROBATION_PACKETS` packets in
  sequence arrived; until then nothing of it reaches the segmenter, and one that never
  confirms is forgotten after :data:`PROBATION_TIMEOUT_S` (random datagrams make no phantom
  streams, and when the table is full a stream on probation gives its place up);
* **latching**: the address of an SSRC's first packet owns it; one address owns at most
  ``max_streams_per_source`` streams;
* **the session clock**: time 0 is the first packet of the first confirmed stream; a stream
  that starts later starts at its own arrival on that clock, and an SSRC that comes back from
  the same sender after its stream ended continues its old clock from its RTP timestamps
  (:class:`~.stream.ClockState`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from emomon.streamer.sources.base import AudioChunk, SourceError
from emomon.streamer.sources.jitter import JitterBuffer
from emomon.streamer.sources.rtp.counters import RateLimitedLog, ReceiverCounters
from emomon.streamer.sources.rtp.packets import RtpPacket, ssrc_channel
from emomon.streamer.sources.rtp.playout import PlayoutClock
from emomon.streamer.sources.rtp.stream import ClockState, RtpStream
from emomon.streamer.sources.sdp import PayloadFormat

log = logging.getLogger("emomon.streamer.sources.rtp.source")

JITTER_MAX_PACKETS = 512  # per stream: ~10 s of 20 ms packets if the consumer stalls
ORIGINS_KEPT = 4096  # ended SSRCs whose clock is remembered (resumed streams keep it)
PROBATION_PACKETS = 2  # RFC 3550 A.1 MIN_SEQUENTIAL: packets in sequence before a stream counts
PROBATION_TIMEOUT_S = 1.0  # an unconfirmed stream is forgotten this long after its first packet
RESUME_TOLERANCE_S = 1.0  # a resumed SSRC's timestamps may disagree with wall time this much


class AllowList:
    """``rtp_allow``: the sender addresses or networks that may send at all (empty: anyone).
    The production setting (issue #18): latching only protects streams that already run."""

    def __init__(self, allow: Sequence[str]) -> None:
        try:
            self.networks = [ipaddress.ip_network(a.strip(), strict=False) for a in allow]
        except ValueError as e:
            raise SourceError(
                f"rtp_allow: {e} (use addresses or CIDR networks like 10.0.0.0/8)"
            ) from e
        self._cache: dict[str, bool] = {}

    def admits(self, host: str) -> bool:
        if not self.networks:
            return True
        ok = self._cache.get(host)
        if ok is None:
            try:
                ip = ipaddress.ip_address(host.split("%")[0])
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                    ip = ip.ipv4_mapped
                ok = any(ip in net for net in self.networks)
            except ValueError:
                ok = False
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[host] = ok
        return ok


@dataclass(frozen=True)
class StreamLimits:
    jitter_s: float
    idle_timeout_s: float
    max_streams: int
    max_streams_per_source: int
    chunk_samples: int


class StreamTable:
    """Active streams by SSRC, plus the state that outlives them (see the module docstring)."""

    def __init__(
        self,
        limits: StreamLimits,
        counters: ReceiverCounters,
        names: dict[int, str],
        wall_offset_s: float,
        log_dropped: Callable[..., None],
    ) -> None:
        self.limits = limits
        self.counters = counters
        self.totals = counters.totals
        self.names = names
        self.wall_offset_s = wall_offset_s
        self.log_dropped = log_dropped
        self.origin_s: float | None = None  # monotonic time of the session's time 0
        self.streams: dict[int, RtpStream] = {}
        self._by_channel: OrderedDict[str, RtpStream] = OrderedDict()  # incl. recently ended
        self._clocks: OrderedDict[int, tuple[ClockState, tuple]] = OrderedDict()
        self._per_source: dict[tuple, int] = {}  # streams owned per sender address
        self._warned: OrderedDict[int, None] = OrderedDict()  # SSRCs warned about (no stream)
        # one WARNING per SSRC, but a flood of random SSRCs must not flood the log either
        self._warn = RateLimitedLog(log, interval_s=10.0, level=logging.WARNING)
        self._warn_bye = RateLimitedLog(log, interval_s=10.0, level=logging.WARNING)
        self._byed: OrderedDict[int, float] = OrderedDict()  # ssrc -> ignore stragglers until

    def get(self, ssrc: int) -> RtpStream | None:
        return self.streams.get(ssrc)

    def __len__(self) -> int:
        return len(self.streams)

    def __iter__(self) -> Iterator[RtpStream]:
        return iter(list(self.streams.values()))

    # -- admission --------------------------------------------------------------------------
    def admit(
        self, pkt: RtpPacket, fmt: PayloadFormat | None, sender: tuple, now: float
    ) -> RtpStream | None:
        """Start a stream for a packet from an unknown SSRC, or count why it was refused."""
        lim = self.limits
        if fmt is None or not fmt.supported:
            self.totals["unsupported_payload"] += 1
            if pkt.ssrc not in self._warned:
                self._warned[pkt.ssrc] = None
                if len(self._warned) > ORIGINS_KEPT:
                    self._warned.popitem(last=False)
                self._warn(
                    "RTP from %s (SSRC %08x) uses payload type %d, which emomon cannot decode "
                    "(%s); its packets are dropped and counted as unsupported_payload",
                    sender,
                    pkt.ssrc,
                    pkt.payload_type,
                    fmt or "no rtpmap: give --sdp or source.rtp_payload_types",
                )
            return None
        until = self._byed.get(pkt.ssrc)
        if until is not None and now < until:
            self.counters.ended_sum["late"] += 1  # a straggler after BYE
            return None
        if self._per_source.get(sender, 0) >= lim.max_streams_per_source:
            self.totals["over_source_cap"] += 1
            self.log_dropped(
                "dropped RTP from new SSRC %08x: %s already owns %d streams",
                pkt.ssrc,
                sender,
                lim.max_streams_per_source,
            )
            return None
        if len(self.streams) >= lim.max_streams and not self._evict_unconfirmed():
            self.totals["over_stream_cap"] += 1
            self.log_dropped(
                "dropped RTP from new SSRC %08x: %d streams active", pkt.ssrc, lim.max_streams
            )
            return None
        return self._new_stream(pkt, sender, now)

    def _new_stream(self, pkt: RtpPacket, sender: tuple, now: float) -> RtpStream:
        lim = self.limits
        channel = ssrc_channel(pkt.ssrc)
        stream = RtpStream(
            ssrc=pkt.ssrc,
            channel=channel,
            speaker=self.names.get(pkt.ssrc, channel),
            clock_offset_s=0.0,
            first_arrival_s=now,
            jitter=JitterBuffer(lim.jitter_s, JITTER_MAX_PACKETS),
            chunk_samples=lim.chunk_samples,
            max_clock_jump_s=lim.idle_timeout_s + 1.0,
            log_dropped=self.log_dropped,
            last_arrival_s=now,
            source_addr=sender,
            wall_offset_s=self.wall_offset_s,
            probation_left=PROBATION_PACKETS,
            playout=PlayoutClock(8000, lim.idle_timeout_s + 1.0),
        )
        self.streams[pkt.ssrc] = stream
        self._per_source[sender] = self._per_source.get(sender, 0) + 1
        self._by_channel[channel] = stream
        self._by_channel.move_to_end(channel)
        if len(self._by_channel) > 2 * lim.max_streams:
            self._by_channel.popitem(last=False)
        prev = self._clocks.get(pkt.ssrc)
        if prev is not None and prev[1] == sender and self.origin_s is not None:
            # The same sender resumes: same channel, speaker and clock, no probation.
            stream.confirmed = True
            t = prev[0].session_time(pkt.timestamp, now, RESUME_TOLERANCE_S)
            stream.clock_offset_s = t if t is not None else max(prev[0].end_s, now - self.origin_s)
            self.totals["streams_started"] += 1
            self.totals["streams_resumed"] += 1
            log.info(
                "RTP stream %s resumed (%s) at %.3f s",
                channel,
                stream.speaker,
                stream.clock_offset_s,
            )
        return stream

    def probation(self, stream: RtpStream, seq: int) -> bool:
        """RFC 3550 A.1: count a packet of a stream on probation; True when it just confirmed."""
        if stream.probation_next is None or seq == stream.probation_next:
            stream.probation_left -= 1
        else:
            stream.probation_left = PROBATION_PACKETS - 1
        stream.probation_next = (seq + 1) & 0xFFFF
        if stream.probation_left > 0:
            return False
        stream.confirmed = True
        if self.origin_s is None:
            self.origin_s = stream.first_arrival_s
        stream.clock_offset_s = stream.first_arrival_s - self.origin_s
        self.totals["streams_started"] += 1
        log.info(
            "RTP stream %s started (%s) from %s", stream.channel, stream.speaker, stream.source_addr
        )
        return True

    def _evict_unconfirmed(self) -> bool:
        """Make room by forgetting the oldest stream still on probation: a flood of one-packet
        SSRCs must not keep a real caller out (issue #18)."""
        waiting = [st for st in self.streams.values() if not st.confirmed]
        if not waiting:
            return False
        self.forget(min(waiting, key=lambda st: st.first_arrival_s))
        return True

    def bye(self, ssrc: int, sender: tuple, now: float) -> bool:
        """An RTCP BYE for ``ssrc``: True when it ends a live stream. Only the stream's own
        sender may end it: its RTP address (rtcp-mux) or port + 1 (RFC 3550 §11)."""
        stream = self.streams.get(ssrc)
        if stream is None or stream.bye_at_s is not None:
            return False
        host, port = stream.source_addr
        if len(sender) != 2 or sender[0] != host or sender[1] not in (port, port + 1):
            self.totals["foreign_bye"] += 1
            self._warn_bye(
                "ignored RTCP BYE for %s from %s: the stream's sender is %s",
                stream.channel,
                sender,
                stream.source_addr,
            )
            return False
        stream.bye_at_s = now
        log.info("RTCP BYE from %s (%s)", stream.channel, stream.speaker)
        return True

    # -- the end of a stream ----------------------------------------------------------------------
    def forget(self, stream: RtpStream) -> None:
        """Drop a stream that never passed probation: nothing of it reached the segmenter."""
        self.streams.pop(stream.ssrc, None)
        self._release_source(stream)
        self.totals["streams_unconfirmed"] += 1
        self.log_dropped(
            "forgot unconfirmed RTP stream %s from %s", stream.channel, stream.source_addr
        )

    def _release_source(self, stream: RtpStream) -> None:
        n = self._per_source.get(stream.source_addr, 0) - 1
        if n > 0:
            self._per_source[stream.source_addr] = n
        else:
            self._per_source.pop(stream.source_addr, None)

    def finish(self, stream: RtpStream, now: float) -> list[AudioChunk]:
        """End a stream: its last chunks (the final one flagged), then its bookkeeping."""
        out = stream.finish(now)
        self.streams.pop(stream.ssrc, None)
        self._release_source(stream)
        byed = stream.bye_at_s is not None
        if byed:
            self._byed[stream.ssrc] = now + max(1.0, 4 * self.limits.jitter_s)
            if len(self._byed) > ORIGINS_KEPT:
                self._byed.popitem(last=False)
        clock = stream.clock_state(now)
        if clock is not None and not byed:
            self._clocks[stream.ssrc] = (clock, stream.source_addr)
            self._clocks.move_to_end(stream.ssrc)
            if len(self._clocks) > ORIGINS_KEPT:
                self._clocks.popitem(last=False)
        st = self.counters.stream_ended(stream, byed=byed)
        log.info("RTP stream %s ended (%s): %s", stream.channel, "BYE" if byed else "idle", st)
        return out

    # -- time ---------------------------------------------------------------------------------
    def arrival_of(self, channel: str, t_s: float) -> float | None:
        """Wall-clock arrival of ``channel``'s audio at session time ``t_s`` (see RtpSource)."""
        stream = self._by_channel.get(channel)
        arrival = stream.arrival_of(t_s) if stream is not None else None
        return None if arrival is None else arrival + self.wall_offset_s
