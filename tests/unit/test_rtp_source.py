"""RtpSource without a real sender: datagrams go through ``feed_datagram`` (the socket handler)."""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emomon.streamer.sources.base import AudioChunk, AudioSource, SourceError
from emomon.streamer.sources.rtp import RtpSource

ADDR = ("127.0.0.1", 40000)
U_SILENCE = 0xFF  # μ-law code for 0
U_LOUD = 0x80  # μ-law +32124


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 0, marker: bool = False) -> bytes:
    return (
        struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
        )
        + payload
    )


def bye(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x81, 203, 1, ssrc)


def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 20))


async def collect(src: RtpSource) -> list[AudioChunk]:
    return [c async for c in src.chunks()]


def by_channel(chunks: list[AudioChunk]) -> dict[str, list[AudioChunk]]:
    out: dict[str, list[AudioChunk]] = defaultdict(list)
    for c in chunks:
        out[c.channel].append(c)
    return out


def audio(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks])


def assert_contiguous(chunks: list[AudioChunk]) -> None:
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start_s == pytest.approx(a.end_s, abs=1e-6)


def assert_audio_then_silence(pcm: np.ndarray, n_audio: int, max_silence_s: float) -> None:
    """``n_audio`` samples of the loud test signal, then only the silence that was due while
    the stream was idle (media time goes on without packets), at most ``max_silence_s``."""
    assert pcm.size >= n_audio, (pcm.size, n_audio)
    assert np.median(np.abs(pcm[:n_audio])) > 30000
    assert np.all(np.abs(pcm[n_audio + 40 :]) < 50)
    assert pcm.size - n_audio <= max_silence_s * 16000, (pcm.size - n_audio) / 16000


def test_satisfies_the_protocol_and_binds_ephemeral_port() -> None:
    async def main() -> None:
        src = RtpSource("127.0.0.1", 0)
        assert isinstance(src, AudioSource) and not src.multi_speaker_channels
        await src.start()
        await src.start()  # idempotent
        assert src.bound_port > 0 and src.name == f"rtp://127.0.0.1:{src.bound_port}"
        await src.close()

    run(main)


def test_two_ssrcs_two_channels_named_and_contiguous() -> None:
    async def main() -> list[AudioChunk]:
        src = RtpSource(
            "127.0.0.1",
            0,
            payload_types={96: "L16/16000/1"},
            ssrc_names={"0xA": "alice", "11": "bob"},
        )
        await src.start()
        l16 = struct.pack(">320h", *([1000] * 320))
        for i in range(50):  # 1 s each: PCMU 8 kHz and L16 16 kHz, 20 ms packets
            src.feed_datagram(rtp(i, i * 160, 0xA, bytes([U_LOUD]) * 160), ADDR)
            src.feed_datagram(rtp(1000 + i, 7 + i * 320, 11, l16, pt=96), ADDR)
        await src.close()
        chunks = await collect(src)
        assert src.stats["packets"] == 100 and src.stats["streams_started"] == 2
        return chunks

    chunks = run(main)
    ch = by_channel(chunks)
    assert set(ch) == {"ssrc-0000000a", "ssrc-0000000b"}
    alice, bob = ch["ssrc-0000000a"], ch["ssrc-0000000b"]
    assert {c.speaker for c in alice} == {"alice"} and {c.speaker for c in bob} == {"bob"}
    for cs in (alice, bob):
        assert cs[0].start_s == pytest.approx(0.0, abs=0.01)  # one session clock
        assert_contiguous(cs)
        assert [c.final for c in cs] == [False] * (len(cs) - 1) + [True]
        assert all(c.pcm.dtype == np.int16 and c.pcm.size <= 320 for c in cs)
    assert audio(alice).size == 16000  # 1 s at 16 kHz, filter tail included
    assert np.all(audio(bob)[:16000] == 1000)
    assert (
        audio(bob).size == 16000 + 320
    )  # + the silence that carries final=True (no filter tail at 16 kHz)
    assert np.median(audio(alice)[100:-100]) == pytest.approx(32124, abs=200)


def test_lost_packet_becomes_silence_and_timestamp_wrap_is_seamless() -> None:
    async def main() -> tuple[list[AudioChunk], dict[str, int]]:
        src = RtpSource("127.0.0.1", 0)
        await src.start()
        ts0 = (1 << 32) - 160 * 5  # wraps after 5 packets
        for i in range(20):
            if i == 10:
                continue  # lost
            src.feed_datagram(rtp(65530 + i, ts0 + 160 * i, 1, bytes([U_LOUD]) * 160), ADDR)
        await src.close()
        return await collect(src), src.stats

    chunks, stats = run(main)
    pcm = audio(chunks)
    assert pcm.size == 20 * 320
    assert stats["lost"] == 1 and stats["late"] == 0
    hole = pcm[10 * 320 + 40 : 11 * 320 - 40]
    assert np.all(np.abs(hole) < 50)
    assert np.all(pcm[2000:3000] > 30000)


def test_silence_suppression_gap_filled_from_timestamps() -> None:
    async def main() -> list[AudioChunk]:
        src = RtpSource("127.0.0.1", 0)
        await src.start()
        for i in range(5):
            src.feed_datagram(rtp(i, i * 160, 1, bytes([U_LOUD]) * 160), ADDR)
        for i in range(5, 10):  # 1 s of DTX: sequence continues, timestamp jumps
            src.feed_datagram(rtp(i, 8000 + i * 160, 1, bytes([U_LOUD]) * 160, marker=i == 5), ADDR)
        await src.close()
        return await collect(src)

    chunks = run(main)
    assert audio(chunks).size == (10 * 160 + 8000) * 2
    assert_contiguous(chunks)


def test_reorder_duplicates_and_stats_by_ssrc() -> None:
    async def main() -> RtpSource:
        src = RtpSource("127.0.0.1", 0, jitter_ms=60)
        await src.start()
        order = [0, 1, 3, 2, 2, 4, 6, 5, 7, 7, 7, 9]  # 8 lost
        for i in order:
            src.feed_datagram(rtp(i, i * 160, 0xBEEF, bytes([i]) * 160), ADDR)
        await src.close()
        src.chunks_seen = await collect(src)  # type: ignore[attr-defined]
        return src

    src = run(main)
    per = src.stats_by_ssrc()["ssrc-0000beef"]
    assert (
        per["duplicate"] == 3
        and per["reordered"] == 2
        and per["lost"] == 1
        and per["packets"] == 12
    )
    t = src.stats
    assert (t["duplicate"], t["reordered"], t["lost"], t["streams_ended"]) == (3, 2, 1, 1)
    assert audio(src.chunks_seen).size == 10 * 320  # type: ignore[attr-defined]


def test_rtcp_bye_muxed_ends_the_stream_with_a_final_chunk() -> None:
    async def main() -> tuple[list[AudioChunk], float, dict[str, int]]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=20, idle_timeout_s=30)
        await src.start()
        got: list[AudioChunk] = []

        async def consume() -> None:
            async for c in src.chunks():
                got.append(c)
                if c.final:
                    return

        task = asyncio.create_task(consume())
        for i in range(10):
            src.feed_datagram(rtp(i, i * 160, 5, bytes([U_LOUD]) * 160), ADDR)
        await asyncio.sleep(0.05)
        t0 = asyncio.get_running_loop().time()
        src.feed_datagram(bye(5), ADDR)
        await task
        waited = asyncio.get_running_loop().time() - t0
        src.feed_datagram(
            rtp(10, 1600, 5, bytes([U_LOUD]) * 160), ADDR
        )  # straggler after BYE: ignored
        stats = src.stats
        await src.close()
        return got, waited, stats

    got, waited, stats = run(main)
    assert got[-1].final and waited < 10  # the idle timeout is 30 s
    assert (
        stats["streams_ended"] == stats["streams_ended_bye"] == 1
        and stats["streams_active"] == 0
        and stats["rtcp"] == 1
    )


def test_idle_timeout_ends_stream_then_exit_when_idle_ends_chunks() -> None:
    async def main() -> tuple[list[AudioChunk], dict[str, int]]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=10, idle_timeout_s=0.2, exit_when_idle_s=0.3)
        await src.start()
        for i in range(5):
            src.feed_datagram(rtp(i, i * 160, 9, bytes([U_LOUD]) * 160), ADDR)
        return await collect(src), src.stats

    chunks, stats = run(main)
    assert chunks[-1].final and stats["streams_ended"] == 1


def test_resumed_ssrc_keeps_its_clock() -> None:
    async def main() -> list[AudioChunk]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0, idle_timeout_s=0.1, exit_when_idle_s=0.5)
        await src.start()
        got: list[AudioChunk] = []

        async def consume() -> None:
            async for c in src.chunks():
                got.append(c)

        task = asyncio.create_task(consume())
        for i in range(3):
            src.feed_datagram(rtp(i, i * 160, 9, bytes([U_LOUD]) * 160), ADDR)
        await asyncio.sleep(0.4)  # idle timeout ends the first stream
        src.feed_datagram(rtp(100, 99999, 9, bytes([U_LOUD]) * 160), ADDR)
        await task
        return got

    got = run(main)
    finals = [c for c in got if c.final]
    assert len(finals) == 2
    second = got[got.index(finals[0]) + 1]
    assert second.start_s >= 0.35  # relative to the SSRC's first packet, not to the new stream


def test_allow_list_rejects_strangers() -> None:
    async def main() -> dict[str, int]:
        src = RtpSource("127.0.0.1", 0, allow=["10.0.0.0/8", "::1"])
        await src.start()
        for i in range(2):  # two packets in sequence: past probation
            src.feed_datagram(rtp(i, 160 * i, 1, b"\xff" * 160), ("10.1.2.3", 5004))
            src.feed_datagram(rtp(i + 1, 160, 1, b"\xff" * 160), ("192.168.1.1", 5004))
            src.feed_datagram(rtp(i, 160 * i, 2, b"\xff" * 160), ("::1", 5004, 0, 0))
            src.feed_datagram(rtp(i, 160 * i, 3, b"\xff" * 160), ("::ffff:10.0.0.1", 5004, 0, 0))
            src.feed_datagram(rtp(i, 160 * i, 4, b"\xff" * 160), ("not-an-ip", 1))
        await src.close()
        await collect(src)
        return src.stats

    stats = run(main)
    assert stats["rejected_source"] == 4 and stats["streams_started"] == 3


def test_stream_cap_counts_and_drops_new_ssrcs() -> None:
    async def main() -> tuple[dict[str, int], set[str]]:
        src = RtpSource("127.0.0.1", 0, max_streams=2)
        await src.start()
        for ssrc in (1, 2, 3, 4):
            for i in range(3):
                src.feed_datagram(rtp(i, i * 160, ssrc, b"\xff" * 160), ADDR)
        await src.close()
        chans = {c.channel for c in await collect(src)}
        return src.stats, chans

    stats, chans = run(main)
    assert stats["over_stream_cap"] == 6 and chans == {"ssrc-00000001", "ssrc-00000002"}


def test_unsupported_payload_types_counted_without_false_loss() -> None:
    async def main() -> tuple[dict[str, int], int]:
        src = RtpSource("127.0.0.1", 0)
        await src.start()
        src.feed_datagram(rtp(0, 0, 77, b"\x00" * 20, pt=18), ADDR)  # G.729 from an unknown SSRC
        for i in range(10):
            pt = 101 if i == 4 else 0  # a DTMF telephone-event inside a PCMU stream
            src.feed_datagram(rtp(i, i * 160, 1, b"\xff" * 160, pt=pt), ADDR)
        await src.close()
        n = audio(await collect(src)).size
        return src.stats, n

    stats, n = run(main)
    assert (
        stats["unsupported_payload"] == 2 and stats["lost"] == 0 and stats["streams_started"] == 1
    )
    assert n == 10 * 320  # the event's 20 ms are silence-filled from the timestamps


def test_sdp_file_gives_dynamic_payload_types(tmp_path: Path) -> None:
    sdp = tmp_path / "call.sdp"
    sdp.write_text(
        "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=No Name\nc=IN IP4 127.0.0.1\nt=0 0\n"
        "m=audio 5004 RTP/AVP 97\nb=AS:256\na=rtpmap:97 L16/16000/1\n"
    )

    async def main() -> int:
        src = RtpSource("127.0.0.1", 0, sdp_path=str(sdp))
        await src.start()
        for i in range(5):
            src.feed_datagram(rtp(i, i * 320, 1, b"\x01\x00" * 320, pt=97), ADDR)
        await src.close()
        return audio(await collect(src))[:1600].tolist().count(256)

    assert run(main) == 1600


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"payload_types": {96: "L16"}}, "ENCODING/RATE"),
        ({"payload_types": {200: "L16/16000/1"}}, "0..127"),
        ({"payload_types": {0: "PCMU/16000"}}, "8000"),
        ({"allow": ["10.0.0.0/33"]}, "rtp_allow"),
        ({"ssrc_names": {"bob": "Bob"}}, "not an SSRC"),
        ({"sdp_path": "/nonexistent/x.sdp"}, "cannot read SDP"),
    ],
)
def test_bad_configuration_is_a_clear_source_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        RtpSource("127.0.0.1", 0, **kwargs)


def test_port_in_use_is_a_source_error() -> None:
    async def main() -> None:
        a = RtpSource("127.0.0.1", 0)
        await a.start()
        b = RtpSource("127.0.0.1", a.bound_port)
        with pytest.raises(SourceError, match="cannot listen"):
            await b.start()
        await a.close()

    run(main)


def test_a_stalled_event_loop_does_not_split_streams() -> None:
    """Packets queue in the kernel while the loop is blocked (say, a model loading) for longer
    than the idle timeout: the stream must go on, not end and restart."""
    import socket
    import time

    async def main() -> tuple[dict[str, int], int]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=20, idle_timeout_s=0.3, exit_when_idle_s=0.4)
        await src.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(rtp(0, 0, 3, bytes([U_LOUD]) * 160), ("127.0.0.1", src.bound_port))
            await asyncio.sleep(0.05)  # the first packet is read: the stream exists
            for i in range(1, 40):
                s.sendto(rtp(i, i * 160, 3, bytes([U_LOUD]) * 160), ("127.0.0.1", src.bound_port))
            time.sleep(0.6)  # the loop is blocked: 39 packets wait in the kernel
        pcm = audio([c async for c in src.chunks()])
        return src.stats, pcm

    stats, pcm = run(main)
    assert stats["streams_started"] == 1 and stats["packets"] == 40
    # the silence released after the stall: at most the stall itself (plus scheduling)
    assert_audio_then_silence(pcm, 40 * 320, 0.6 + 0.1)


def _has_ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")
def test_ipv6_listener() -> None:
    import socket

    async def main() -> tuple[str, int]:
        src = RtpSource("::1", 0, idle_timeout_s=0.2, exit_when_idle_s=0.3)
        await src.start()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            for i in range(5):
                s.sendto(rtp(i, i * 160, 6, bytes([U_LOUD]) * 160), ("::1", src.bound_port))
        return src.name, audio([c async for c in src.chunks()])

    name, pcm = run(main)
    assert name.startswith("rtp://[::1]:")
    assert_audio_then_silence(pcm, 5 * 320, 0.2 + 0.1)


def test_bind_early_without_a_loop_keeps_packets_sent_before_reading() -> None:
    """`bind()` is what a CLI calls before loading models: a busy port fails at once, and
    packets sent during the load wait in the kernel instead of being refused."""
    import socket

    src = RtpSource("127.0.0.1", 0, idle_timeout_s=0.3, exit_when_idle_s=0.3)
    src.bind()
    src.bind()  # idempotent
    with pytest.raises(SourceError, match="cannot listen"):
        RtpSource("127.0.0.1", src.bound_port).bind()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(25):
            s.sendto(rtp(i, i * 160, 8, bytes([U_LOUD]) * 160), ("127.0.0.1", src.bound_port))

    async def main() -> np.ndarray:
        return audio([c async for c in src.chunks()])

    assert_audio_then_silence(run(main), 25 * 320, 0.3 + 0.1)
    assert src.stats["streams_started"] == 1


def test_closed_before_running_yields_nothing() -> None:
    async def main() -> list[AudioChunk]:
        src = RtpSource("127.0.0.1", 0)
        await src.close()
        return await collect(src)

    assert run(main) == []
