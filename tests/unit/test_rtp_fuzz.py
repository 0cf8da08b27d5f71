"""Property tests: malformed datagrams are counted and dropped, never raise, and never disturb a
good stream in the same receiver."""

from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emomon.streamer.sources.rtp import (
    MAX_DATAGRAM_BYTES,
    RtpParseError,
    RtpSource,
    is_rtcp,
    parse_rtp,
)

ADDR = ("127.0.0.1", 40000)

# Second octet of an RTP packet: marker bit + PT, avoiding the RTCP range 192..223 (RFC 5761 §4).
rtp_b1 = st.integers(0, 255).filter(lambda b: not 192 <= b <= 223)


@st.composite
def short(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 11))
    data = draw(st.binary(min_size=n, max_size=n))
    if n >= 2 and is_rtcp(data):
        data = data[:1] + bytes([draw(rtp_b1)]) + data[2:]
    return data


@st.composite
def wrong_version(draw: st.DrawFn) -> bytes:
    v = draw(st.sampled_from([0, 1, 3]))
    b0 = (v << 6) | draw(st.integers(0, 63))
    return bytes([b0]) + draw(st.binary(min_size=11, max_size=200))


@st.composite
def bad_csrc_count(draw: st.DrawFn) -> bytes:
    cc = draw(st.integers(1, 15))
    body = draw(st.binary(min_size=10, max_size=10 + 4 * cc - 1))  # 12 + body < 12 + 4*cc
    return bytes([0x80 | cc, draw(rtp_b1)]) + body


@st.composite
def bad_padding(draw: st.DrawFn) -> bytes:
    payload = draw(st.binary(max_size=40))
    pad = draw(st.one_of(st.just(0), st.integers(len(payload) + 2, 255)))
    return bytes([0xA0, draw(rtp_b1)]) + b"\x00" * 10 + payload + bytes([pad])


@st.composite
def extension_past_end(draw: st.DrawFn) -> bytes:
    words = draw(st.integers(1, 0xFFFF))
    have = draw(st.integers(0, min(4 * words - 1, 60)))
    return (
        bytes([0x90, draw(rtp_b1)])
        + b"\x00" * 10
        + struct.pack("!HH", 0xBEDE, words)
        + b"\x00" * have
    )


@st.composite
def huge(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(MAX_DATAGRAM_BYTES + 1, 65507))
    return bytes([0x80, 0]) + b"\x00" * (n - 2)


@st.composite
def bad_rtcp(draw: st.DrawFn) -> bytes:
    words = draw(st.integers(1, 100))
    return bytes([0x81, 203]) + struct.pack("!H", words) + draw(st.binary(max_size=4 * words - 1))


malformed = st.one_of(
    short(),
    wrong_version(),
    bad_csrc_count(),
    bad_padding(),
    extension_past_end(),
    huge(),
    bad_rtcp(),
)


def good(i: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, i, i * 160, 0xC0FFEE) + b"\x80" * 160


@given(malformed)
def test_parser_rejects_each_kind(data: bytes) -> None:
    if is_rtcp(data):
        return  # RTCP goes to the RTCP parser; the receiver test covers it
    try:
        parse_rtp(data)
    except RtpParseError:
        return
    raise AssertionError(f"accepted malformed datagram {data[:16].hex()}")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(malformed, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_receiver_counts_and_drops_malformed_while_good_stream_goes_on(
    bad: list[bytes], rnd
) -> None:
    async def main() -> tuple[dict[str, int], int, bool]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0)
        await src.start()
        n_good = 20
        slots = sorted(rnd.randrange(n_good + 1) for _ in bad)
        k = 0
        for i in range(n_good):
            while k < len(slots) and slots[k] == i:
                src.feed_datagram(bad[k], ADDR)
                k += 1
            src.feed_datagram(good(i), ADDR)
        for b in bad[k:]:
            src.feed_datagram(b, ADDR)
        await src.close()
        chunks = [c async for c in src.chunks()]
        pcm = np.concatenate([c.pcm for c in chunks])
        return src.stats, pcm.size, chunks[-1].final

    stats, n, final = asyncio.run(main())
    assert stats["malformed"] == len(bad)
    assert stats["packets"] == 20 and stats["lost"] == 0 and stats["streams_started"] == 1
    assert n == 20 * 320 and final


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_arbitrary_bytes_never_raise_and_every_datagram_is_accounted(
    datagrams: list[bytes],
) -> None:
    async def main() -> tuple[dict[str, int], int]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0)
        await src.start()
        for d in datagrams:
            src.feed_datagram(d, ADDR)
        await src.close()
        async for _ in src.chunks():
            pass
        # A well-formed packet whose payload cannot be decoded (odd-length L16) counts as a
        # packet *and* as malformed in its stream; leave those out of the datagram balance.
        undecodable = sum(v["malformed"] for v in src.stats_by_ssrc().values())
        return src.stats, undecodable

    s, undecodable = asyncio.run(main())
    assert s["malformed"] - undecodable + s["packets"] + s["rtcp"] == len(datagrams)


def test_over_a_real_socket_garbage_and_good_packets() -> None:
    """The same through the kernel: a UDP socket sends garbage between good packets."""

    async def main() -> tuple[dict[str, int], int]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=20, idle_timeout_s=0.2, exit_when_idle_s=0.3)
        await src.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(30):
                s.sendto(good(i), ("127.0.0.1", src.bound_port))
                s.sendto(b"\x00" * (i % 12), ("127.0.0.1", src.bound_port))
                s.sendto(b"\x8f\x00" + b"\x00" * 20, ("127.0.0.1", src.bound_port))
        chunks = [c async for c in src.chunks()]
        return src.stats, np.concatenate([c.pcm for c in chunks])

    stats, pcm = asyncio.run(main())
    assert stats["malformed"] == 60 and stats["packets"] == 30
    # the good stream's 30 packets, then the silence due until its idle timeout
    assert np.median(np.abs(pcm[: 30 * 320])) > 30000
    assert np.all(np.abs(pcm[30 * 320 + 40 :]) < 50) and pcm.size <= 30 * 320 + 0.3 * 16000


# -- payloads of the codecs real PBXs send (issue #15): any bytes, never an exception ------------
OPUS_PT = 111


def _packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from([9, 13, OPUS_PT, 101]), st.binary(max_size=400)),
        min_size=1,
        max_size=25,
    )
)
def test_cn_g722_opus_and_dtmf_payloads_of_any_content_never_raise(
    packets: list[tuple[int, bytes]],
) -> None:
    """Comfort noise, G.722, Opus (mapped like an SDP would) and DTMF packets with arbitrary
    payloads, in one stream per payload type: decoded, counted as malformed, or taken as
    silence, but never an exception, and the audio stays on its timeline."""

    async def main() -> tuple[dict[str, int], dict[str, list[float]]]:
        src = RtpSource(
            "127.0.0.1",
            0,
            jitter_ms=0,
            payload_types={OPUS_PT: "opus/48000/2", 101: "telephone-event/8000"},
        )
        await src.start()
        clock = {9: 160, 13: 160, OPUS_PT: 960, 101: 160}
        sent: dict[int, int] = {}
        # a good G.722 packet first, so the CN and DTMF stream have audio to continue from
        src.feed_datagram(_packet(9, 0, 0, 0xC0DEC000 + 13, b"\x00" * 160), ADDR)
        sent[13] = 1
        for pt, payload in packets:
            i = sent.get(pt, 0)
            sent[pt] = i + 1
            src.feed_datagram(_packet(pt, i, i * clock[pt], 0xC0DEC000 + pt, payload), ADDR)
        await src.close()
        starts: dict[str, list[float]] = {}
        async for c in src.chunks():
            assert c.pcm.dtype == np.int16
            starts.setdefault(c.channel, []).append(c.start_s)
        return src.stats, starts

    stats, starts = asyncio.run(main())
    assert stats["packets"] == len(packets) + 1 and stats["unsupported_payload"] == 0
    for times in starts.values():
        assert times == sorted(times)  # never backwards


def test_real_g722_and_opus_packets_decode_through_the_receiver() -> None:
    """Packets made by FFmpeg's own encoders (via PyAV) come out as the tone that went in."""
    import av

    tone = (np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 8000).astype(np.int16)

    def encode(codec: str, rate: int, pcm: np.ndarray) -> list[bytes]:
        enc = av.CodecContext.create(codec, "w")
        enc.sample_rate, enc.layout, enc.format = rate, "mono", "s16"
        enc.open()
        n = enc.frame_size
        out: list[bytes] = []
        for i in range(0, pcm.size - n + 1, n):
            frame = av.AudioFrame.from_ndarray(pcm[i : i + n].reshape(1, -1), "s16", "mono")
            frame.sample_rate, frame.pts = rate, i
            out += [bytes(p) for p in enc.encode(frame)]
        return out

    async def main() -> dict[str, np.ndarray]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0, payload_types={OPUS_PT: "opus/48000/2"})
        await src.start()
        for i, p in enumerate(encode("g722", 16000, tone)):
            src.feed_datagram(_packet(9, i, i * 160, 0x722, p), ADDR)
        for i, p in enumerate(encode("libopus", 48000, np.repeat(tone, 3))):
            src.feed_datagram(_packet(OPUS_PT, i, i * 960, 0x0905, p), ADDR)
        await src.close()
        out: dict[str, list[np.ndarray]] = {}
        async for c in src.chunks():
            out.setdefault(c.channel, []).append(c.pcm)
        return {k: np.concatenate(v) for k, v in out.items()}

    got = asyncio.run(main())
    for ch in ("ssrc-00000722", "ssrc-00000905"):
        pcm = got[ch][1600:12000].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(pcm))
        peak_hz = np.argmax(spectrum) * 16000 / pcm.size
        assert abs(peak_hz - 440) < 5, (ch, peak_hz)
        assert 4000 < np.sqrt(np.mean(pcm**2)) < 7000, ch  # 8000 peak: RMS ~5657


def test_ten_thousand_random_packets_make_no_phantom_streams() -> None:
    """Issue #18: 10,000 well-formed RTP headers with random SSRCs, sequence numbers and ports
    (a scan or a flood) used to leave 127 streams and 73 MB behind. On probation, none reaches
    the segmenter, none stays, and memory stays bounded by the stream cap."""
    import tracemalloc

    rng = np.random.default_rng(18)

    async def main() -> tuple[dict[str, int], int, int, int]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0, idle_timeout_s=5)
        await src.start()
        chunks = 0

        async def consume() -> None:
            nonlocal chunks
            async for _ in src.chunks():
                chunks += 1

        task = asyncio.create_task(consume())
        tracemalloc.start()
        for k in range(10_000):
            ssrc, seq = int(rng.integers(1, 1 << 32)), int(rng.integers(0, 1 << 16))
            head = struct.pack("!BBHII", 0x80, 0, seq, int(rng.integers(0, 1 << 32)), ssrc)
            src.feed_datagram(head + rng.bytes(160), ("10.6.6.6", 1024 + k % 60000))
            if k % 500 == 0:
                await asyncio.sleep(0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await asyncio.sleep(1.3)  # past the probation timeout
        left = len(src._streams)
        await src.close()
        await task
        return src.stats, chunks, left, peak

    stats, chunks, left, peak = asyncio.run(main())
    assert chunks == 0 and left == 0 and stats["streams_started"] == 0
    assert stats["streams_unconfirmed"] == 10_000 and stats["packets"] == 10_000
    print(f"peak traced memory {peak / 1e6:.1f} MB")
    assert peak < 10 << 20, peak  # 64 streams on probation at most (measured 1.5 MB)
