"""Live RTP audio (``--source rtp://HOST:PORT``): one stream per SSRC, one speaker per stream.

The receive path is a non-blocking UDP socket read by the event loop (a batch of datagrams
per wake-up); per datagram it only parses the 12-byte RTP header (RFC 3550 §5.1: CSRC list,
header extension, padding, marker) and pushes the packet into that SSRC's
:class:`~emomon.streamer.sources.jitter.JitterBuffer`. Decoding (G.711, L16, G.722, Opus), silence
from the RTP timestamps and resampling to 16 kHz happen in :meth:`RtpSource.chunks` when the
buffer releases packets, and only for streams that received something, so the cost per packet
does not grow with the number of streams and a burst never stalls the loop for long.

What a real network does to a call — reordering, loss, duplicates, sequence and timestamp
wrap-around, a sender that restarts, silence suppression and comfort noise, RTCP on the same
port (rtcp-mux, told apart by RFC 5761 §4) or on port+1, garbage datagrams, strangers sending
to the port — is counted in :attr:`RtpSource.stats` and never raises.

Time (issue #15): silence that did not arrive is released when it is due (:mod:`.playout`),
so media time moves on for the segmenter through DTX gaps and after a stream stops; every
datagram carries its kernel receive time (:mod:`.udp`), from which latency is measured. A
stream ends on RTCP BYE from its own sender or after ``idle_timeout_s`` without packets; its
last chunk has ``final=True``. Which SSRCs become streams, who owns them and the one session
clock are :mod:`.streams`' business (issues #15, #18).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from emomon.streamer.sources.base import AudioChunk, SourceError
from emomon.streamer.sources.rtp import codecs
from emomon.streamer.sources.rtp.counters import RateLimitedLog, ReceiverCounters
from emomon.streamer.sources.rtp.packets import (
    RtpParseError,
    is_rtcp,
    parse_rtcp_bye,
    parse_rtp,
    parse_ssrc,
)
from emomon.streamer.sources.rtp.stream import QueuedPayload, RtpStream
from emomon.streamer.sources.rtp.streams import (
    PROBATION_TIMEOUT_S,
    AllowList,
    StreamLimits,
    StreamTable,
)
from emomon.streamer.sources.rtp.udp import UdpListener, format_host
from emomon.streamer.sources.sdp import PayloadFormat, load_sdp, payload_map, undecodable
from emomon.streamer.utterance import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

CHUNK_MS = 20
MAX_IDLE_DEFER_S = 1.0  # longest an idle decision waits for a socket backlog to be read


class RtpSource:
    """Receive RTP audio on ``host:port``; yield 16 kHz chunks per SSRC (see module docstring)."""

    multi_speaker_channels = False  # one SSRC = one participant
    realtime = True  # chunks' wall_end are arrival times

    def __init__(
        self,
        host: str,
        port: int,
        *,
        jitter_ms: int = 60,
        idle_timeout_s: float = 5.0,
        max_streams: int = 64,
        max_streams_per_source: int = 4,
        allow: Sequence[str] = (),
        payload_types: Mapping[int, str] | None = None,
        ssrc_names: Mapping[str, str] | None = None,
        sdp_path: str | None = None,
        exit_when_idle_s: float | None = None,
        chunk_ms: int = CHUNK_MS,
    ) -> None:
        if not 0 <= port <= 65535:
            raise SourceError(f"RTP port {port} is out of range 0..65535")
        if (
            jitter_ms < 0
            or idle_timeout_s <= 0
            or max_streams < 1
            or max_streams_per_source < 1
            or chunk_ms < 1
        ):
            raise SourceError(
                "RTP settings: jitter_ms >= 0, idle_timeout_s > 0, max_streams >= 1 and "
                "max_streams_per_source >= 1 required"
            )
        self.host, self.port = host, port
        self.name = f"rtp://{format_host(host)}:{port}"
        self.jitter_s = jitter_ms / 1000.0
        self.idle_timeout_s = idle_timeout_s
        self.max_streams = max_streams
        self.max_streams_per_source = max_streams_per_source
        self.exit_when_idle_s = exit_when_idle_s
        self.chunk_samples = SAMPLE_RATE_HZ * chunk_ms // 1000
        sdp = load_sdp(sdp_path) if sdp_path else None
        self.formats: dict[int, PayloadFormat] = payload_map(payload_types, sdp)
        codecs.preload()  # PT 9 (G.722) is always mapped
        if sdp is not None and (bad := undecodable(sdp.payload_types)):
            log.warning(
                "SDP %s offers codecs emomon cannot decode: %s; their packets will be dropped "
                "and counted (unsupported_payload)",
                sdp_path,
                ", ".join(bad),
            )
        self.rtcp_mux_only = False
        self._allow = AllowList(allow)
        self._names = {parse_ssrc(k): v for k, v in (ssrc_names or {}).items()}
        self._udp = UdpListener(host, port, self._on_datagram)
        self._dirty: set[int] = set()  # SSRCs with new packets since the consumer last looked
        self._next_scan = 0.0  # when every stream's deadlines (gap, idle, BYE) must be checked
        self._defer_since: float | None = None  # an idle decision waiting for a socket backlog
        self._wall_offset_s = time.time() - time.monotonic()
        self._first_packet_s: float | None = None
        self._counters = ReceiverCounters()
        self._totals = self._counters.totals
        self._log_malformed = RateLimitedLog(log)
        limits = StreamLimits(
            self.jitter_s, idle_timeout_s, max_streams, max_streams_per_source, self.chunk_samples
        )
        self._table = StreamTable(
            limits, self._counters, self._names, self._wall_offset_s, self._log_malformed
        )
        self._streams = self._table.streams  # active streams by SSRC
        self._started = False
        self._closing = False
        self._consuming = False
        self._waiter: asyncio.Future[None] | None = None
        self._last_activity = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind the UDP socket(s) now, without an event loop. Idempotent.

        Packets sent after it wait in the kernel's receive buffer until :meth:`start` (or
        :meth:`chunks`) reads them. ``emomon run`` binds only after its models warmed up, so
        that nothing queues behind the warm-up (#15); :meth:`check_port` tests the port first.
        """
        if self._udp.bound:
            return
        self._udp.bind()
        self.name = f"rtp://{format_host(self.host)}:{self.bound_port}"
        self._last_activity = time.monotonic()
        log.info("listening for RTP on %s", self.name)

    def check_port(self) -> None:
        """Bind and release the port at once: a busy or invalid address fails in a second, before
        models load, while the packets of a sender that starts early are refused rather than
        queued behind the warm-up (issue #15: :meth:`start` binds for real once ready)."""
        if self._udp.bound:
            return
        self._udp.bind()
        self._udp.close()

    async def start(self) -> None:
        """Bind (unless :meth:`bind` was called) and start reading on the running loop. Idempotent."""
        if self._started:
            return
        if self._closing:
            raise SourceError(f"{self.name} is closed")
        self.bind()
        loop = asyncio.get_running_loop()
        self._started = True
        self._udp.listen(loop)
        self._last_activity = time.monotonic()

    async def close(self) -> None:
        """Stop receiving; a running :meth:`chunks` flushes every stream (final chunks) and ends."""
        self._closing = True
        self._udp.close()
        self._wake()

    @property
    def origin_wall(self) -> float | None:
        """Wall-clock time (``time.time()``) of session time 0: the first stream's first packet."""
        origin = self._table.origin_s
        return None if origin is None else origin + self._wall_offset_s

    def arrival_of(self, channel: str, t_s: float) -> float | None:
        """Wall-clock time (``time.time()``) at which the audio of ``channel`` at session time
        ``t_s`` arrived — for a time in silence, the arrival of the last speech before it — or
        None when unknown. Latency is measured from it (issue #15)."""
        return self._table.arrival_of(channel, t_s)

    @property
    def bound_port(self) -> int:
        """The UDP port RTP arrives on (0 until bound)."""
        return self._udp.bound_port

    @property
    def rtcp_port(self) -> int | None:
        """The RTCP port (RTP port + 1), or None when only rtcp-mux is received."""
        return self._udp.rtcp_port

    # -- receive path (datagram handler: parse + push, nothing heavier) --------------------------
    def _on_datagram(self, data: bytes, addr: tuple, rtcp_port: bool, wall: float | None) -> None:
        arrival = None
        if wall is not None:  # the kernel's receive time, on this source's monotonic clock
            arrival = min(time.monotonic(), wall - self._wall_offset_s)
        self.feed_datagram(data, addr, rtcp_port=rtcp_port, arrival_s=arrival)

    def feed_datagram(
        self, data: bytes, addr: tuple, *, rtcp_port: bool = False, arrival_s: float | None = None
    ) -> None:
        """Handle one datagram as if it arrived on the socket (the protocol calls this; so can
        tests and replays of captured traffic). ``arrival_s`` (``time.monotonic()``) is when it
        arrived, if known (kernel timestamps); else now. Never raises for any content."""
        now = time.monotonic() if arrival_s is None else arrival_s
        self._last_activity = now
        if not self._allow.admits(addr[0] if addr else ""):
            self._totals["rejected_source"] += 1
            return
        if rtcp_port or is_rtcp(data):
            self._on_rtcp(data, addr, now)
            return
        try:
            pkt = parse_rtp(data)
        except RtpParseError as e:
            self._totals["malformed"] += 1
            self._log_malformed("dropped malformed RTP from %s: %s", addr, e)
            return
        self._totals["packets"] += 1
        self._totals["bytes"] += len(data)
        if self._first_packet_s is None:
            self._first_packet_s = now
        sender = tuple(addr[:2])
        stream = self._streams.get(pkt.ssrc)
        fmt = self.formats.get(pkt.payload_type)
        if stream is None:
            stream = self._table.admit(pkt, fmt, sender, now)
            if stream is None:
                return
        elif sender != stream.source_addr:
            # Latching: the SSRC belongs to the address that sent its first packet.
            self._totals["foreign_source"] += 1
            self._log_malformed(
                "dropped RTP for %s from %s (the stream is %s's)",
                stream.channel,
                addr,
                stream.source_addr,
            )
            return
        c = stream.counters
        c["packets"] += 1
        c["bytes"] += len(data)
        stream.last_arrival_s = now
        if not stream.confirmed and self._table.probation(stream, pkt.sequence):
            self._dirty.add(stream.ssrc)  # confirmed: what it buffered can go
            self._wake()
        if fmt is None or not fmt.supported:
            c["unsupported_payload"] += 1
            if not stream.warned:
                stream.warned = True
                log.warning(
                    "RTP stream %s (%s) sends payload type %d, which emomon cannot decode "
                    "(%s); those packets are dropped and counted as unsupported_payload",
                    stream.channel,
                    stream.speaker,
                    pkt.payload_type,
                    fmt or "no rtpmap: give --sdp or source.rtp_payload_types",
                )
            fmt = None
            ts = stream.playout.extend(pkt.timestamp)
        elif fmt.encoding == "TELEPHONE-EVENT":
            ts = stream.playout.extend(pkt.timestamp)
        else:
            ts = stream.playout.observe(pkt.timestamp, now, fmt.clock_rate_hz)
        queued = QueuedPayload(ts, fmt, pkt.payload, now)
        if stream.jitter.push(pkt.sequence, queued, now) and stream.confirmed:
            self._dirty.add(pkt.ssrc)
            self._wake()

    def _on_rtcp(self, data: bytes, addr: tuple, now: float) -> None:
        try:
            byes = parse_rtcp_bye(data)
        except RtpParseError as e:
            self._totals["malformed"] += 1
            self._log_malformed("dropped malformed RTCP from %s: %s", addr, e)
            return
        self._totals["rtcp"] += 1
        for ssrc in byes:
            if self._table.bye(ssrc, tuple(addr[:2]), now):
                self._dirty.add(ssrc)
                self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- consumer side ----------------------------------------------------------------------------
    async def chunks(self) -> AsyncIterator[AudioChunk]:
        """Yield chunks as the jitter buffers release them; see the class docstring for the end."""
        if self._closing and not self._started:
            return  # closed before it ever ran: nothing to flush
        await self.start()
        if self._consuming:
            raise SourceError(f"{self.name}: chunks() is already being consumed")
        self._consuming = True
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = time.monotonic()
                # Only streams with new packets need work, except when some stream's deadline
                # (a gap's window, silence due, the idle timeout, a BYE's grace) is due: then
                # look at all. This keeps the cost per packet flat in the number of streams.
                full_scan = now >= self._next_scan
                ssrcs = list(self._streams) if full_scan else list(self._dirty)
                self._dirty.clear()
                next_scan = now + 0.5 if full_scan else self._next_scan
                ending: list[RtpStream] = []
                # Silence is due only when no datagram waits in the kernel (a busy loop must
                # not turn packets it has not read yet into silence).
                fill: float | None | bool = False if self._closing else None
                for ssrc in ssrcs:
                    stream = self._streams.get(ssrc)
                    if stream is None:
                        continue
                    if not stream.confirmed:
                        if now - stream.first_arrival_s >= PROBATION_TIMEOUT_S:
                            self._table.forget(stream)
                        else:
                            next_scan = min(next_scan, stream.first_arrival_s + PROBATION_TIMEOUT_S)
                        continue
                    if fill is None:
                        fill = self.jitter_s if not self._udp.has_unread() else False
                    window = fill if isinstance(fill, float) else None
                    for chunk in stream.drain(now, fill_s=window):
                        yield chunk
                    if self._should_end(stream, now):
                        ending.append(stream)
                    else:
                        next_scan = min(next_scan, self._deadline(stream))
                if fill is False and not self._closing:
                    # datagrams wait in the socket: let the loop read them, then look again
                    next_scan = now + 0.001
                self._next_scan = next_scan
                if ending and self._should_defer(now):
                    # What looks idle may have packets waiting in the socket (the loop was busy:
                    # a model loading, a slow stage). Read them before judging.
                    self._dirty.update(st.ssrc for st in ending)
                    await asyncio.sleep(0.001)
                    continue
                for stream in ending:
                    for chunk in self._table.finish(stream, now):
                        yield chunk
                if self._closing:
                    for stream in list(self._streams.values()):
                        if not stream.confirmed:
                            self._table.forget(stream)
                            continue
                        for chunk in self._table.finish(stream, time.monotonic()):
                            yield chunk
                    return
                if self._idle_exit_due(now):
                    if self._should_defer(now):
                        await asyncio.sleep(0.001)
                        continue
                    return
                await self._sleep_until_needed(loop)
        finally:
            self._consuming = False

    def _idle_exit_due(self, now: float) -> bool:
        """``exit_when_idle_s`` counts from the first packet: a run started before its sender
        waits for it (issue #15)."""
        return (
            self.exit_when_idle_s is not None
            and self._first_packet_s is not None
            and not self._streams
            and now - self._last_activity >= self.exit_when_idle_s
        )

    def _should_defer(self, now: float) -> bool:
        """Hold an idle decision while unread datagrams wait in the kernel, for at most ~1 s (a
        backlog drains in far less; under endless overload idle streams must still end)."""
        if not self._udp.has_unread():
            self._defer_since = None
            return False
        if self._defer_since is None:
            self._defer_since = now
        return now - self._defer_since < MAX_IDLE_DEFER_S

    def _should_end(self, stream: RtpStream, now: float) -> bool:
        if stream.bye_at_s is not None and now >= stream.bye_at_s + self.jitter_s:
            return True
        return now - stream.last_arrival_s >= self.idle_timeout_s

    def _deadline(self, stream: RtpStream) -> float:
        """The next time this stream needs the consumer without a new packet arriving."""
        deadlines = [
            stream.last_arrival_s + self.idle_timeout_s,
            stream.jitter.next_deadline(),
            stream.fill_deadline(self.jitter_s),
            None if stream.bye_at_s is None else stream.bye_at_s + self.jitter_s,
        ]
        return min(d for d in deadlines if d is not None)

    async def _sleep_until_needed(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for a packet (:meth:`_wake`) or the next deadline, whichever comes first."""
        timeout = self._next_wakeup(time.monotonic())
        if timeout <= 0:
            await asyncio.sleep(0)  # never spin: the socket readers run on this loop too
            return
        self._waiter = loop.create_future()
        handle = loop.call_later(timeout, self._wake)
        try:
            await self._waiter
        finally:
            handle.cancel()
            self._waiter = None

    def _next_wakeup(self, now: float) -> float:
        if self._dirty or self._closing:
            return 0.0
        deadline = self._next_scan
        if (
            self.exit_when_idle_s is not None
            and not self._streams
            and self._first_packet_s is not None
        ):
            deadline = min(deadline, self._last_activity + self.exit_when_idle_s)
        return max(0.0, deadline - now)

    # -- statistics -------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Totals over the receiver's life (ended streams included)."""
        return self._counters.summary(self._streams.values())

    def stats_by_ssrc(self) -> dict[str, dict[str, int]]:
        """Per-stream counters keyed by channel id (``ssrc-XXXXXXXX``): active and recently ended."""
        return self._counters.by_channel(self._streams.values())
