"""The UDP sockets an RTP receiver listens on: RTP on the port, RTCP on port+1 when it is free.

Reading is a non-blocking socket drained by the event loop, a batch of datagrams per wake-up;
each datagram goes to one callback. Nothing here knows RTP: the receiver parses.

On Linux each datagram carries the kernel's receive time (``SO_TIMESTAMPNS``): latency is
measured from when a packet *arrived*, not from when a busy event loop got round to reading
it (issue #15). Elsewhere the read time stands in.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import struct
import sys
from collections.abc import Callable

from emomon.streamer.sources.base import SourceError

log = logging.getLogger(__name__)

SOCKET_RCVBUF_BYTES = 4 << 20  # absorb bursts while the consumer is busy
READ_BATCH_DATAGRAMS = 256  # datagrams read per socket wake-up

# (datagram, sender address, arrived on the RTCP port, arrival: time.time() by the kernel or None)
DatagramHandler = Callable[[bytes, tuple, bool, float | None], None]

# Linux <asm-generic/socket.h>: SO_TIMESTAMPNS, delivered as SCM_TIMESTAMPNS (struct timespec)
_SO_TIMESTAMPNS = 35 if sys.platform.startswith("linux") else None
_TIMESPEC = struct.Struct("@qq")
_ANC_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: DatagramHandler, rtcp_only: bool = False) -> None:
        self.on_datagram = on_datagram
        self.rtcp_only = rtcp_only

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.on_datagram(data, addr, self.rtcp_only, None)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)


class UdpListener:
    """Binds the RTP (and RTCP) sockets and hands every datagram to ``on_datagram``."""

    def __init__(self, host: str, port: int, on_datagram: DatagramHandler) -> None:
        self.host, self.port = host, port
        self.on_datagram = on_datagram
        self.bound_port = 0
        self.rtcp_port: int | None = None
        self._sockets: list[socket.socket] = []
        self._readers: list[tuple[asyncio.AbstractEventLoop, socket.socket]] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._stamped: set[int] = set()  # sockets whose datagrams carry the kernel's time

    @property
    def bound(self) -> bool:
        return bool(self._sockets)

    def bind(self) -> None:
        """Bind the RTP socket (or raise :class:`SourceError`), then try port+1 for RTCP."""
        try:
            sock = bind_udp(self.host, self.port)
        except socket.gaierror as e:
            raise SourceError(
                f"cannot listen for RTP on {self.host}:{self.port}: {e.strerror or e} "
                "(use an address of this machine, e.g. 0.0.0.0, 127.0.0.1 or ::)"
            ) from e
        except OSError as e:
            raise SourceError(
                f"cannot listen for RTP on {self.host}:{self.port}: {e.strerror or e} "
                "(is another process using the port? pick another with rtp://HOST:PORT)"
            ) from e
        self._sockets.append(sock)
        self.bound_port = int(sock.getsockname()[1])
        if self.bound_port < 65535:
            try:
                self._sockets.append(bind_udp(self.host, self.bound_port + 1))
                self.rtcp_port = self.bound_port + 1
            except OSError as e:
                log.info(
                    "RTCP port %d unavailable (%s); only rtcp-mux BYE will end streams",
                    self.bound_port + 1,
                    e,
                )

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading every bound socket on ``loop``."""
        for i, sock in enumerate(self._sockets):
            self._listen(loop, sock, rtcp_only=i == 1)

    def _listen(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, *, rtcp_only: bool
    ) -> None:
        """Read the socket from the event loop, draining up to a batch of datagrams per wake-up.

        asyncio's datagram transport reads one datagram per loop iteration; at thousands of
        packets per second (and after any stall of the loop) reading a batch per readiness
        event costs far less. Loops without ``add_reader`` (Windows proactor) fall back to a
        plain datagram transport.
        """
        if enable_timestamps(sock):
            self._stamped.add(sock.fileno())
        try:
            loop.add_reader(sock.fileno(), self._on_readable, sock, rtcp_only)
            self._readers.append((loop, sock))
        except NotImplementedError:
            fut = loop.create_datagram_endpoint(
                lambda: _Protocol(self.on_datagram, rtcp_only), sock=sock
            )
            task = loop.create_task(fut)
            task.add_done_callback(lambda t: self._transports.append(t.result()[0]))

    def _on_readable(self, sock: socket.socket, rtcp_only: bool) -> None:
        stamped = sock.fileno() in self._stamped
        for _ in range(READ_BATCH_DATAGRAMS):
            arrived: float | None = None
            try:
                if stamped:
                    data, anc, _flags, addr = sock.recvmsg(65536, _ANC_BYTES)
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                            sec, nsec = _TIMESPEC.unpack(raw[: _TIMESPEC.size])
                            arrived = sec + nsec * 1e-9
                else:
                    data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket: not fatal
                log.debug("RTP socket error: %s", e)
                return
            self.on_datagram(data, addr, rtcp_only, arrived)

    def has_unread(self) -> bool:
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

    def close(self) -> None:
        """Stop reading and close the sockets."""
        for loop, sock in self._readers:
            loop.remove_reader(sock.fileno())
        self._readers.clear()
        for t in self._transports:
            t.close()
        self._transports.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._stamped.clear()


def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (IPv4 or IPv6), with a large receive buffer."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF_BYTES)
        except OSError as e:
            log.debug("could not enlarge the RTP receive buffer: %s", e)
        sock.setblocking(False)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def enable_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram with its receive time; False where it cannot."""
    if _SO_TIMESTAMPNS is None or not _ANC_BYTES:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError as e:
        log.debug("no kernel receive timestamps: %s", e)
        return False
    return True


def format_host(host: str) -> str:
    """``host`` as it appears in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host
