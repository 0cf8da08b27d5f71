"""Live RTP audio (``--source rtp://HOST:PORT``): one stream per SSRC, one speaker per stream.

The receive path is a non-blocking UDP socket read by the event loop (a batch of datagrams
per wake-up); per datagram it only parses the 12-byte RTP header (RFC 3550 §5.1: CSRC list,
header extension, padding, marker) and pushes the packet into that SSRC's
:class:`~emomon.streamer.sources.jitter.JitterBuffer`. Decoding (G.711 / L16), silence fill
from the RTP timestamps and resampling to 16 kHz happen in :meth:`RtpSource.chunks` when the
buffer releases packets, and only for streams that received something, so the cost per packet
does not grow with the number of streams and a burst never stalls the loop for long.

What a real network does to a call — reordering, loss, duplicates, sequence and timestamp
wrap-around, a sender that restarts, RTCP on the same port (rtcp-mux, told apart by RFC 5761
§4) or on port+1, garbage datagrams, strangers sending to the port — is counted in
:attr:`RtpSource.stats` and never raises. A stream ends on RTCP BYE or after
``idle_timeout_s`` without packets; its last chunk has ``final=True``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import select
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from emomon.streamer.sources.base import AudioChunk, SourceError
from emomon.streamer.sources.g711 import (
    StreamResampler,
    decode_alaw,
    decode_l16,
    decode_ulaw,
    to_int16,
)
from emomon.streamer.sources.jitter import JitterBuffer
from emomon.streamer.sources.sdp import PayloadFormat, load_sdp, payload_map
from emomon.streamer.utterance import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

RTP_VERSION = 2
RTP_HEADER_BYTES = 12
MAX_DATAGRAM_BYTES = 9000  # jumbo-frame MTU; real audio RTP is far smaller, bigger is garbage
RTCP_BYE = 203
CHUNK_MS = 20
_SOCKET_RCVBUF = 4 << 20  # absorb bursts while the consumer is busy
_READ_BATCH = 256  # datagrams read per socket wake-up
_MAX_IDLE_DEFER_S = 1.0  # longest an idle decision waits for a socket backlog to be read
_JITTER_MAX_PACKETS = 512  # per stream: ~10 s of 20 ms packets if the consumer stalls
_ORIGINS_KEPT = (
    4096  # SSRCs whose first-packet time is remembered (resumed streams keep their clock)
)
_ENDED_STATS_KEPT = 256


class RtpParseError(ValueError):
    """A datagram that is not a well-formed RTP (or RTCP) packet; the message says why."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """A parsed RTP packet (RFC 3550 §5.1). ``payload`` excludes CSRCs, extension and padding."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding: int = 0


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: with rtcp-mux, a second octet of 192–223 (RTCP PT 200–204 and friends) is RTCP."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP datagram; raise :class:`RtpParseError` for anything malformed."""
    n = len(data)
    if n < RTP_HEADER_BYTES:
        raise RtpParseError(f"short datagram ({n} bytes < 12)")
    if n > MAX_DATAGRAM_BYTES:
        raise RtpParseError(f"huge datagram ({n} bytes > {MAX_DATAGRAM_BYTES})")
    b0, b1 = data[0], data[1]
    if b0 >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version {b0 >> 6}, expected 2")
    cc = b0 & 0x0F
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    off = RTP_HEADER_BYTES + 4 * cc
    if off > n:
        raise RtpParseError(f"CSRC count {cc} needs {off} bytes, datagram has {n}")
    csrcs = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_BYTES) if cc else ()
    ext_profile: int | None = None
    ext = b""
    if b0 & 0x10:
        if off + 4 > n:
            raise RtpParseError("header extension flag set but no extension header")
        ext_profile, words = struct.unpack_from("!HH", data, off)
        ext_end = off + 4 + 4 * words
        if ext_end > n:
            raise RtpParseError(f"header extension of {words} words runs past the end")
        ext = bytes(data[off + 4 : ext_end])
        off = ext_end
    end = n
    pad = 0
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0 or off + pad > n:
            raise RtpParseError(
                f"padding length {pad} invalid for {n - off} bytes after the header"
            )
        end = n - pad
    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=bytes(data[off:end]),
        marker=bool(b1 & 0x80),
        csrcs=tuple(csrcs),
        extension_profile=ext_profile,
        extension=ext,
        padding=pad,
    )


def parse_rtcp_bye(data: bytes) -> list[int]:
    """Walk a compound RTCP packet (RFC 3550 §6.1); return the SSRCs that said BYE.

    Raises :class:`RtpParseError` when a packet's length runs past the datagram or the version
    is wrong. Other RTCP types (SR, RR, SDES, APP, feedback) are skipped.
    """
    n = len(data)
    if n < 4 or n > MAX_DATAGRAM_BYTES:
        raise RtpParseError(f"RTCP datagram of {n} bytes")
    off = 0
    byes: list[int] = []
    while off + 4 <= n:
        b0, pt, words = data[off], data[off + 1], struct.unpack_from("!H", data, off + 2)[0]
        if b0 >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTCP version {b0 >> 6}, expected 2")
        end = off + 4 * (words + 1)
        if end > n:
            raise RtpParseError(
                f"RTCP packet type {pt} of {4 * (words + 1)} bytes runs past the end"
            )
        if pt == RTCP_BYE:
            count = b0 & 0x1F
            if 4 + 4 * count > end - off:
                raise RtpParseError(f"RTCP BYE lists {count} SSRCs but is {end - off} bytes")
            byes.extend(struct.unpack_from(f"!{count}I", data, off + 4))
        off = end
    if off != n:
        raise RtpParseError(f"{n - off} trailing bytes after RTCP packets")
    return byes


def parse_ssrc(key: str | int) -> int:
    """An SSRC from settings: ``1234``, ``"1234"``, ``"0x4d2"`` or ``"ssrc-000004d2"``."""
    if isinstance(key, int):
        value = key
    else:
        k = key.strip().lower()
        try:
            if k.startswith("ssrc-"):
                value = int(k[5:], 16)
            elif k.startswith("0x"):
                value = int(k[2:], 16)
            else:
                value = int(k, 10)
        except ValueError as e:
            raise SourceError(
                f"rtp_ssrc_names: {key!r} is not an SSRC (decimal, 0x-hex or ssrc-XXXXXXXX)"
            ) from e
    if not 0 <= value <= 0xFFFFFFFF:
        raise SourceError(f"rtp_ssrc_names: SSRC {key!r} is not a 32-bit number")
    return value


def ssrc_channel(ssrc: int) -> str:
    return f"ssrc-{ssrc:08x}"


class _RateLimitedLog:
    """Log a repeated DEBUG message at most once per ``interval_s``, with the count in between."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._last = -1e9
        self._suppressed = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        log.debug(msg + extra, *args)


_STREAM_COUNTERS = (
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


@dataclass(slots=True)
class _Queued:
    timestamp: int
    fmt: PayloadFormat | None  # None: a payload type we cannot decode (keeps its sequence slot)
    payload: bytes


@dataclass(slots=True)
class _Stream:
    """One SSRC: its jitter buffer, decoder state and timeline."""

    ssrc: int
    channel: str
    speaker: str
    base_s: float  # offset of this stream's clock from the SSRC's first packet ever
    first_arrival: float
    jitter: JitterBuffer[_Queued]
    last_arrival: float = 0.0
    bye_at: float | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_STREAM_COUNTERS, 0))
    # decoder / timeline state (consumer side)
    resampler: StreamResampler | None = None
    rate: int = 0
    ts_last: int | None = None  # extended timestamp of the last decoded packet
    seg_ts0: int = 0  # extended timestamp at the start of the current segment
    seg_t0_s: float = 0.0  # stream time of the current segment's first sample
    seg_in: int = 0  # input samples fed in this segment
    seg_out: int = 0  # 16 kHz samples emitted in this segment
    emitted_any: bool = False

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        js = self.jitter.stats
        out.update(late=js.late, lost=js.lost, duplicate=js.duplicate, reordered=js.reordered)
        out["buffer_overflow"] = js.overflow
        return out


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: RtpSource, rtcp_only: bool = False) -> None:
        self.owner = owner
        self.rtcp_only = rtcp_only

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.owner.feed_datagram(data, addr, rtcp_port=self.rtcp_only)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)


class RtpSource:
    """Receive RTP audio on ``host:port``; yield 16 kHz chunks per SSRC (see module docstring)."""

    multi_speaker_channels = False  # one SSRC = one participant

    def __init__(
        self,
        host: str,
        port: int,
        *,
        jitter_ms: int = 60,
        idle_timeout_s: float = 5.0,
        max_streams: int = 64,
        allow: Sequence[str] = (),
        payload_types: Mapping[int, str] | None = None,
        ssrc_names: Mapping[str, str] | None = None,
        sdp_path: str | None = None,
        exit_when_idle_s: float | None = None,
        chunk_ms: int = CHUNK_MS,
    ) -> None:
        if not 0 <= port <= 65535:
            raise SourceError(f"RTP port {port} is out of range 0..65535")
        if jitter_ms < 0 or idle_timeout_s <= 0 or max_streams < 1 or chunk_ms < 1:
            raise SourceError(
                "RTP settings: jitter_ms >= 0, idle_timeout_s > 0, max_streams >= 1 required"
            )
        self.host, self.port = host, port
        self.name = f"rtp://{_fmt_host(host)}:{port}"
        self.jitter_s = jitter_ms / 1000.0
        self.idle_timeout_s = idle_timeout_s
        self.max_streams = max_streams
        self.exit_when_idle_s = exit_when_idle_s
        self.chunk_samples = SAMPLE_RATE_HZ * chunk_ms // 1000
        sdp = load_sdp(sdp_path) if sdp_path else None
        self.formats: dict[int, PayloadFormat] = payload_map(payload_types, sdp)
        self.rtcp_mux_only = False
        try:
            self._allow = [ipaddress.ip_network(a.strip(), strict=False) for a in allow]
        except ValueError as e:
            raise SourceError(
                f"rtp_allow: {e} (use addresses or CIDR networks like 10.0.0.0/8)"
            ) from e
        self._names = {parse_ssrc(k): v for k, v in (ssrc_names or {}).items()}
        self.bound_port = 0
        self.rtcp_port: int | None = None
        self._sockets: list[socket.socket] = []
        self._readers: list[tuple[asyncio.AbstractEventLoop, socket.socket]] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._dirty: set[int] = set()  # SSRCs with new packets since the consumer last looked
        self._next_scan = 0.0  # when every stream's deadlines (gap, idle, BYE) must be checked
        self._defer_since: float | None = None  # an idle decision waiting for a socket backlog
        self._streams: dict[int, _Stream] = {}
        self._origins: OrderedDict[int, float] = OrderedDict()
        self._ended_stats: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._byed: OrderedDict[int, float] = OrderedDict()  # ssrc -> ignore stragglers until
        self._allow_cache: dict[str, bool] = {}
        self._totals = dict.fromkeys(
            (
                "packets",
                "bytes",
                "malformed",
                "rtcp",
                "unsupported_payload",
                "rejected_source",
                "over_stream_cap",
                "streams_started",
                "streams_ended",
                "streams_ended_bye",
            ),
            0,
        )
        self._ended_sum = dict.fromkeys(_STREAM_COUNTERS, 0)
        self._started = False
        self._closing = False
        self._consuming = False
        self._waiter: asyncio.Future[None] | None = None
        self._last_activity = time.monotonic()
        self._log_malformed = _RateLimitedLog()

    # -- lifecycle ------------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind the UDP socket(s) now, without an event loop. Idempotent.

        Call it before anything slow (loading models): a port in use then fails at once, and
        packets sent meanwhile wait in the kernel's receive buffer instead of being refused;
        :meth:`start` (or :meth:`chunks`) begins reading them.
        """
        if self._sockets:
            return
        try:
            sock = _bind_udp(self.host, self.port)
        except OSError as e:
            raise SourceError(
                f"cannot listen for RTP on {self.host}:{self.port}: {e.strerror or e} "
                "(is another process using the port? pick another with rtp://HOST:PORT)"
            ) from e
        self._sockets.append(sock)
        self.bound_port = int(sock.getsockname()[1])
        self.name = f"rtp://{_fmt_host(self.host)}:{self.bound_port}"
        if self.bound_port < 65535:
            try:
                self._sockets.append(_bind_udp(self.host, self.bound_port + 1))
                self.rtcp_port = self.bound_port + 1
            except OSError as e:
                log.info(
                    "RTCP port %d unavailable (%s); only rtcp-mux BYE will end streams",
                    self.bound_port + 1,
                    e,
                )
        self._last_activity = time.monotonic()
        log.info("listening for RTP on %s", self.name)

    async def start(self) -> None:
        """Bind (unless :meth:`bind` was called) and start reading on the running loop. Idempotent."""
        if self._started:
            return
        if self._closing:
            raise SourceError(f"{self.name} is closed")
        self.bind()
        loop = asyncio.get_running_loop()
        self._started = True
        for i, sock in enumerate(self._sockets):
            self._listen(loop, sock, rtcp_only=i == 1)
        self._last_activity = time.monotonic()

    def _listen(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, *, rtcp_only: bool
    ) -> None:
        """Read the socket from the event loop, draining up to a batch of datagrams per wake-up.

        asyncio's datagram transport reads one datagram per loop iteration; at thousands of
        packets per second (and after any stall of the loop) reading a batch per readiness
        event costs far less. Loops without ``add_reader`` (Windows proactor) fall back to a
        plain datagram transport.
        """
        try:
            loop.add_reader(sock.fileno(), self._on_readable, sock, rtcp_only)
            self._readers.append((loop, sock))
        except NotImplementedError:
            fut = loop.create_datagram_endpoint(lambda: _Protocol(self, rtcp_only), sock=sock)
            task = loop.create_task(fut)
            task.add_done_callback(lambda t: self._transports.append(t.result()[0]))

    def _on_readable(self, sock: socket.socket, rtcp_only: bool) -> None:
        for _ in range(_READ_BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket: not fatal
                log.debug("RTP socket error: %s", e)
                return
            self.feed_datagram(data, addr, rtcp_port=rtcp_only)

    async def close(self) -> None:
        """Stop receiving; a running :meth:`chunks` flushes every stream (final chunks) and ends."""
        self._closing = True
        for loop, sock in self._readers:
            loop.remove_reader(sock.fileno())
        self._readers.clear()
        for t in self._transports:
            t.close()
        self._transports.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._wake()

    # -- receive path (datagram handler: parse + push, nothing heavier) --------------------------
    def feed_datagram(self, data: bytes, addr: tuple, *, rtcp_port: bool = False) -> None:
        """Handle one datagram as if it arrived on the socket (the protocol calls this; so can
        tests and replays of captured traffic). Never raises for any content of ``data``."""
        now = time.monotonic()
        self._last_activity = now
        if self._allow and not self._allowed(addr[0] if addr else ""):
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
        stream = self._streams.get(pkt.ssrc)
        fmt = self.formats.get(pkt.payload_type)
        if stream is None:
            if fmt is None or not fmt.supported:
                self._totals["unsupported_payload"] += 1
                self._log_malformed(
                    "dropped RTP with unsupported payload type %d from %s", pkt.payload_type, addr
                )
                return
            until = self._byed.get(pkt.ssrc)
            if until is not None and now < until:
                self._ended_sum["late"] += 1  # a straggler after BYE
                return
            if len(self._streams) >= self.max_streams:
                self._totals["over_stream_cap"] += 1
                self._log_malformed(
                    "dropped RTP from new SSRC %08x: %d streams active", pkt.ssrc, self.max_streams
                )
                return
            stream = self._new_stream(pkt.ssrc, now)
        c = stream.counters
        c["packets"] += 1
        c["bytes"] += len(data)
        stream.last_arrival = now
        if fmt is None or not fmt.supported:
            c["unsupported_payload"] += 1
            fmt = None
        if stream.jitter.push(pkt.sequence, _Queued(pkt.timestamp, fmt, pkt.payload), now):
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
            stream = self._streams.get(ssrc)
            if stream is not None and stream.bye_at is None:
                stream.bye_at = now
                log.info("RTCP BYE from %s (%s)", stream.channel, stream.speaker)
                self._dirty.add(ssrc)
                self._wake()

    def _allowed(self, host: str) -> bool:
        ok = self._allow_cache.get(host)
        if ok is None:
            try:
                ip = ipaddress.ip_address(host.split("%")[0])
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                    ip = ip.ipv4_mapped
                ok = any(ip in net for net in self._allow)
            except ValueError:
                ok = False
            if len(self._allow_cache) > 4096:
                self._allow_cache.clear()
            self._allow_cache[host] = ok
        return ok

    def _new_stream(self, ssrc: int, now: float) -> _Stream:
        origin = self._origins.get(ssrc)
        if origin is None:
            origin = now
            self._origins[ssrc] = now
            if len(self._origins) > _ORIGINS_KEPT:
                self._origins.popitem(last=False)
        channel = ssrc_channel(ssrc)
        stream = _Stream(
            ssrc=ssrc,
            channel=channel,
            speaker=self._names.get(ssrc, channel),
            base_s=now - origin,
            first_arrival=now,
            jitter=JitterBuffer(self.jitter_s, _JITTER_MAX_PACKETS),
            last_arrival=now,
        )
        self._streams[ssrc] = stream
        self._totals["streams_started"] += 1
        log.info("RTP stream %s started (%s)", channel, stream.speaker)
        return stream

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
                # (a gap's window, the idle timeout, a BYE's grace) is due: then look at all.
                # This keeps the cost per packet flat in the number of streams.
                full_scan = now >= self._next_scan
                ssrcs = list(self._streams) if full_scan else list(self._dirty)
                self._dirty.clear()
                next_scan = now + 0.5 if full_scan else self._next_scan
                ending: list[_Stream] = []
                for ssrc in ssrcs:
                    stream = self._streams.get(ssrc)
                    if stream is None:
                        continue
                    for chunk in self._drain(stream, now):
                        yield chunk
                    if self._should_end(stream, now):
                        ending.append(stream)
                    else:
                        next_scan = min(next_scan, self._deadline(stream))
                self._next_scan = next_scan
                if ending and self._should_defer(now):
                    # What looks idle may have packets waiting in the socket (the loop was busy:
                    # a model loading, a slow stage). Read them before judging.
                    self._dirty.update(st.ssrc for st in ending)
                    await asyncio.sleep(0.001)
                    continue
                for stream in ending:
                    for chunk in self._finish(stream, now):
                        yield chunk
                if self._closing:
                    for stream in list(self._streams.values()):
                        for chunk in self._finish(stream, time.monotonic()):
                            yield chunk
                    return
                if (
                    self.exit_when_idle_s is not None
                    and not self._streams
                    and now - self._last_activity >= self.exit_when_idle_s
                ):
                    if self._should_defer(now):
                        await asyncio.sleep(0.001)
                        continue
                    return
                timeout = self._next_wakeup(time.monotonic())
                if timeout > 0:
                    self._waiter = loop.create_future()
                    handle = loop.call_later(timeout, self._wake)
                    try:
                        await self._waiter
                    finally:
                        handle.cancel()
                        self._waiter = None
        finally:
            self._consuming = False

    def _should_defer(self, now: float) -> bool:
        """Hold an idle decision while unread datagrams wait in the kernel, for at most ~1 s (a
        backlog drains in far less; under endless overload idle streams must still end)."""
        if not self._kernel_has_datagrams():
            self._defer_since = None
            return False
        if self._defer_since is None:
            self._defer_since = now
        return now - self._defer_since < _MAX_IDLE_DEFER_S

    def _kernel_has_datagrams(self) -> bool:
        """Whether a socket holds datagrams not read yet: after a stall of the event loop (a model
        loading, a slow stage) a stream that looks idle may have packets waiting there."""
        fds = [sock.fileno() for sock in self._sockets if sock.fileno() >= 0]
        if not fds:
            return False
        try:
            readable, _, _ = select.select(fds, [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(readable)

    def _should_end(self, s: _Stream, now: float) -> bool:
        if s.bye_at is not None and now >= s.bye_at + self.jitter_s:
            return True
        return now - s.last_arrival >= self.idle_timeout_s

    def _deadline(self, s: _Stream) -> float:
        """The next time this stream needs the consumer without a new packet arriving."""
        deadline = s.last_arrival + self.idle_timeout_s
        d = s.jitter.next_deadline()
        if d is not None:
            deadline = min(deadline, d)
        if s.bye_at is not None:
            deadline = min(deadline, s.bye_at + self.jitter_s)
        return deadline

    def _next_wakeup(self, now: float) -> float:
        if self._dirty or self._closing:
            return 0.0
        deadline = self._next_scan
        if self.exit_when_idle_s is not None and not self._streams:
            deadline = min(deadline, self._last_activity + self.exit_when_idle_s)
        return max(0.0, deadline - now)

    def _drain(self, s: _Stream, now: float, *, flush: bool = False) -> list[AudioChunk]:
        pieces: list[tuple[float, np.ndarray]] = []
        for _, q in s.jitter.pop_ready(now, flush=flush):
            if q.fmt is not None:
                self._decode_into(s, q, now, pieces)
        return self._to_chunks(s, pieces)

    def _decode_into(
        self, s: _Stream, q: _Queued, now: float, pieces: list[tuple[float, np.ndarray]]
    ) -> None:
        fmt = q.fmt
        assert fmt is not None
        try:
            if fmt.encoding == "PCMU":
                pcm = decode_ulaw(q.payload)
            elif fmt.encoding == "PCMA":
                pcm = decode_alaw(q.payload)
            else:
                pcm = decode_l16(q.payload, fmt.channels)
        except ValueError as e:
            s.counters["malformed"] += 1
            self._log_malformed("%s: undecodable payload: %s", s.channel, e)
            return
        if s.ts_last is None:
            ts = q.timestamp
        else:
            delta = (q.timestamp - s.ts_last) % (1 << 32)
            ts = s.ts_last + (delta - (1 << 32) if delta >= 1 << 31 else delta)  # 32-bit wrap
        if s.resampler is None or fmt.clock_rate_hz != s.rate:
            self._new_segment(s, ts, fmt.clock_rate_hz, self._position_s(s), pieces)
        gap = (ts - s.seg_ts0) - s.seg_in
        max_fill = int((self.idle_timeout_s + 1.0) * s.rate)
        if gap > max_fill or gap < -max_fill:
            # The sender jumped its clock (restart, long silence suppression): start a new
            # segment at whichever is later, the audio emitted so far or the arrival time.
            self._new_segment(
                s, ts, s.rate, max(self._position_s(s), s.base_s + now - s.first_arrival), pieces
            )
            gap = 0
        if gap > 0:
            # Lost packets or silence suppression (DTX): the timestamps say how long.
            self._feed(s, np.zeros(gap, dtype=np.int16), pieces)
        elif gap < 0:
            pcm = pcm[-gap:]  # overlaps audio already played: keep only the new part
        s.ts_last = ts
        if pcm.size:
            self._feed(s, pcm, pieces)

    def _position_s(self, s: _Stream) -> float:
        return s.seg_t0_s + s.seg_out / SAMPLE_RATE_HZ

    def _new_segment(
        self, s: _Stream, ts: int, rate: int, start_s: float, pieces: list[tuple[float, np.ndarray]]
    ) -> None:
        if s.resampler is not None:
            tail = s.resampler.flush()
            if tail.size:
                pieces.append((self._position_s(s), to_int16(tail)))
                s.seg_out += tail.size
            start_s = max(start_s, self._position_s(s))
        s.resampler = StreamResampler(rate, SAMPLE_RATE_HZ)
        s.rate = rate
        s.seg_ts0, s.seg_t0_s, s.seg_in, s.seg_out = ts, start_s, 0, 0

    def _feed(self, s: _Stream, pcm: np.ndarray, pieces: list[tuple[float, np.ndarray]]) -> None:
        assert s.resampler is not None
        s.seg_in += pcm.shape[0]
        if s.resampler.identity:
            out = pcm.astype(np.int16, copy=False)
        else:
            out = to_int16(s.resampler.process(pcm))
        if out.size:
            pieces.append((self._position_s(s), out))
            s.seg_out += out.size

    def _to_chunks(
        self, s: _Stream, pieces: list[tuple[float, np.ndarray]], final: bool = False
    ) -> list[AudioChunk]:
        """Merge contiguous pieces and cut them into chunks of at most ``chunk_ms``."""
        merged: list[tuple[float, np.ndarray]] = []
        for start, pcm in pieces:
            if merged:
                m_start, m_pcm = merged[-1]
                if abs(m_start + m_pcm.size / SAMPLE_RATE_HZ - start) < 0.5 / SAMPLE_RATE_HZ:
                    merged[-1] = (m_start, np.concatenate([m_pcm, pcm]))
                    continue
            merged.append((start, pcm))
        out: list[AudioChunk] = []
        n = self.chunk_samples
        for start, pcm in merged:
            for i in range(0, pcm.size, n):
                out.append(
                    AudioChunk(
                        channel=s.channel,
                        start_s=s.base_s + start + i / SAMPLE_RATE_HZ,
                        pcm=pcm[i : i + n],
                        speaker=s.speaker,
                    )
                )
        if final:
            if not out:
                # Nothing left to say (16 kHz L16 has no filter tail): a short silence carries the flag.
                silence = np.zeros(self.chunk_samples, dtype=np.int16)
                out.append(
                    AudioChunk(s.channel, s.base_s + self._position_s(s), silence, s.speaker)
                )
            last = out[-1]
            out[-1] = AudioChunk(last.channel, last.start_s, last.pcm, last.speaker, final=True)
        if out:
            s.emitted_any = True
        return out

    def _finish(self, s: _Stream, now: float) -> list[AudioChunk]:
        """End a stream: release everything buffered, the resampler tail, and the final chunk."""
        out = self._drain(s, now, flush=True)
        pieces: list[tuple[float, np.ndarray]] = []
        if s.resampler is not None:
            tail = s.resampler.flush()
            if tail.size:
                pieces.append((self._position_s(s), to_int16(tail)))
                s.seg_out += tail.size
        out.extend(self._to_chunks(s, pieces, final=True))
        self._streams.pop(s.ssrc, None)
        if s.bye_at is not None:
            self._byed[s.ssrc] = now + max(1.0, 4 * self.jitter_s)
            if len(self._byed) > _ORIGINS_KEPT:
                self._byed.popitem(last=False)
        st = s.stats()
        for k in _STREAM_COUNTERS:
            self._ended_sum[k] += st[k]
        self._ended_stats[s.channel] = st
        if len(self._ended_stats) > _ENDED_STATS_KEPT:
            self._ended_stats.popitem(last=False)
        self._totals["streams_ended"] += 1
        if s.bye_at is not None:
            self._totals["streams_ended_bye"] += 1
        log.info(
            "RTP stream %s ended (%s): %s", s.channel, "BYE" if s.bye_at is not None else "idle", st
        )
        return out

    # -- statistics -------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Totals over the receiver's life (ended streams included)."""
        out = dict(self._totals)
        per = dict(self._ended_sum)
        for s in self._streams.values():
            for k, v in s.stats().items():
                per[k] += v
        for k in ("late", "lost", "duplicate", "reordered", "buffer_overflow"):
            out[k] = per[k]
        out["malformed"] += per["malformed"]
        out["unsupported_payload"] += per["unsupported_payload"]
        out["streams_active"] = len(self._streams)
        return out

    def stats_by_ssrc(self) -> dict[str, dict[str, int]]:
        """Per-stream counters keyed by channel id (``ssrc-XXXXXXXX``): active and recently ended."""
        out = {k: dict(v) for k, v in self._ended_stats.items()}
        for s in self._streams.values():
            out[s.channel] = s.stats()
        return out


def _bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (IPv4 or IPv6), with a large receive buffer."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_RCVBUF)
        except OSError as e:
            log.debug("could not enlarge the RTP receive buffer: %s", e)
        sock.setblocking(False)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
