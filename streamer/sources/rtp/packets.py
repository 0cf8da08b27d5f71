"""RTP and RTCP wire format: header parsing and validation (RFC 3550 §5.1, §6; RFC 5761 §4).

Pure functions over bytes, no sockets and no state, so the fuzz tests can hammer them alone.
Anything malformed raises :class:`RtpParseError` with a message saying what was wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emomon.streamer.sources.base import SourceError

RTP_VERSION = 2
RTP_HEADER_BYTES = 12
MAX_DATAGRAM_BYTES = 9000  # jumbo-frame MTU; real audio RTP is far smaller, bigger is garbage
RTCP_BYE = 203


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
    """The channel id of an SSRC's stream: ``ssrc-`` and eight hex digits."""
    return f"ssrc-{ssrc:08x}"
