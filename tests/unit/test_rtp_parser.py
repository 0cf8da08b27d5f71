"""RTP/RTCP header parsing against hand-built packets (RFC 3550 §5.1, §6; RFC 5761 §4)."""

from __future__ import annotations

import struct

import pytest

from emomon.streamer.sources.base import SourceError
from emomon.streamer.sources.rtp import (
    RtpParseError,
    is_rtcp,
    parse_rtcp_bye,
    parse_rtp,
    parse_ssrc,
    ssrc_channel,
)


def header(
    *, pt=0, seq=1, ts=160, ssrc=0xDEADBEEF, marker=False, cc=0, x=False, p=False, version=2
) -> bytes:
    b0 = (version << 6) | (0x20 if p else 0) | (0x10 if x else 0) | cc
    b1 = (0x80 if marker else 0) | pt
    return struct.pack("!BBHII", b0, b1, seq, ts, ssrc)


def test_plain_packet() -> None:
    pkt = parse_rtp(header(pt=8, seq=65535, ts=0xFFFFFFFF, ssrc=7) + b"\xd5" * 160)
    assert (pkt.payload_type, pkt.sequence, pkt.timestamp, pkt.ssrc) == (8, 65535, 0xFFFFFFFF, 7)
    assert pkt.payload == b"\xd5" * 160
    assert not pkt.marker and pkt.csrcs == () and pkt.extension_profile is None and pkt.padding == 0


def test_marker_bit_is_not_part_of_payload_type() -> None:
    pkt = parse_rtp(header(pt=96, marker=True) + b"ab")
    assert pkt.marker and pkt.payload_type == 96


def test_csrc_list() -> None:
    data = header(cc=3) + struct.pack("!III", 1, 2, 0xFFFFFFFF) + b"payload"
    pkt = parse_rtp(data)
    assert pkt.csrcs == (1, 2, 0xFFFFFFFF)
    assert pkt.payload == b"payload"


def test_header_extension_after_csrcs() -> None:
    ext = (
        struct.pack("!HH", 0xBEDE, 2) + b"\x10\xaa\x00\x00" + b"\x21\x01\x02\x00"
    )  # RFC 8285 one-byte
    data = header(cc=1, x=True) + struct.pack("!I", 42) + ext + b"audio"
    pkt = parse_rtp(data)
    assert pkt.csrcs == (42,)
    assert pkt.extension_profile == 0xBEDE
    assert pkt.extension == b"\x10\xaa\x00\x00\x21\x01\x02\x00"
    assert pkt.payload == b"audio"


def test_empty_extension() -> None:
    pkt = parse_rtp(header(x=True) + struct.pack("!HH", 0x1000, 0) + b"xyz")
    assert pkt.extension_profile == 0x1000 and pkt.extension == b"" and pkt.payload == b"xyz"


def test_padding_removed() -> None:
    data = header(p=True) + b"\x01\x02\x03" + b"\x00\x00\x00\x04"
    pkt = parse_rtp(data)
    assert pkt.payload == b"\x01\x02\x03" and pkt.padding == 4


def test_padding_with_extension_and_csrc_everything_together() -> None:
    data = (
        header(cc=2, x=True, p=True, marker=True, pt=0)
        + struct.pack("!II", 5, 6)
        + struct.pack("!HH", 1, 1)
        + b"EXT!"
        + b"\xff" * 8
        + b"\x00\x02"
    )
    pkt = parse_rtp(data)
    assert pkt.marker and pkt.csrcs == (5, 6) and pkt.extension == b"EXT!"
    assert pkt.payload == b"\xff" * 8 and pkt.padding == 2


def test_padding_may_consume_whole_payload() -> None:
    assert parse_rtp(header(p=True) + b"\x00\x00\x00\x04").payload == b""


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "short"),
        (header()[:11], "short"),
        (header(version=1) + b"x", "version"),
        (header(version=0) + b"x", "version"),
        (header(cc=4) + b"\x00" * 12, "CSRC"),
        (header(x=True) + b"\x00\x01", "extension"),
        (header(x=True) + struct.pack("!HH", 1, 3) + b"\x00" * 8, "extension"),
        (header(p=True) + b"ab\x00", "padding"),  # pad count 0
        (header(p=True) + b"ab\x09", "padding"),  # longer than the payload
        (header() + b"\x00" * 9000, "huge"),
    ],
)
def test_malformed_are_rejected_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(RtpParseError, match=why):
        parse_rtp(data)


def test_rtcp_mux_demultiplexing_rfc5761() -> None:
    for pt in (200, 201, 202, 203, 204):
        assert is_rtcp(bytes([0x80, pt, 0, 1]))
    for pt in (0, 8, 96, 127):
        assert not is_rtcp(header(pt=pt))
        assert not is_rtcp(header(pt=pt, marker=True))  # marker + PT < 64 stays RTP
    assert not is_rtcp(b"\x80")


def bye(*ssrcs: int, reason: bytes = b"") -> bytes:
    body = b"".join(struct.pack("!I", s) for s in ssrcs)
    if reason:
        body += bytes([len(reason)]) + reason
        body += b"\x00" * (-len(body) % 4)
    return struct.pack("!BBH", 0x80 | len(ssrcs), 203, len(body) // 4) + body


def receiver_report(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def test_rtcp_bye_in_a_compound_packet() -> None:
    assert parse_rtcp_bye(receiver_report(9) + bye(1, 0xABCDEF01, reason=b"hangup")) == [
        1,
        0xABCDEF01,
    ]
    assert parse_rtcp_bye(receiver_report(9)) == []


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\xcb\x00",  # shorter than a header
        receiver_report(9)[:-1],  # length runs past the end
        struct.pack("!BBH", 0x85, 203, 1) + b"\x00" * 4,  # BYE claims 5 SSRCs in 4 bytes
        struct.pack("!BBHI", 0x40, 201, 1, 9),  # version 1
        receiver_report(9) + b"\x00\x00",  # trailing garbage
    ],
)
def test_malformed_rtcp(data: bytes) -> None:
    with pytest.raises(RtpParseError):
        parse_rtcp_bye(data)


def test_ssrc_keys_decimal_hex_and_channel_form() -> None:
    assert parse_ssrc("1234") == 1234
    assert parse_ssrc("0x4D2") == 1234
    assert parse_ssrc(ssrc_channel(1234)) == 1234
    assert parse_ssrc(4294967295) == 0xFFFFFFFF
    with pytest.raises(SourceError, match="not an SSRC"):
        parse_ssrc("alice")
    with pytest.raises(SourceError, match="32-bit"):
        parse_ssrc("0x1ffffffff")
