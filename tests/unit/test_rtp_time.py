"""RtpSource time and trust (issues #15, #18): silence released when due, one session clock,
comfort noise, probation of new SSRCs, sender latching and the per-address cap."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from emomon.streamer.sources.base import AudioChunk, SourceError
from emomon.streamer.sources.rtp import RtpSource
from emomon.streamer.sources.rtp.playout import INITIAL_SPREAD_S, PlayoutClock
from emomon.streamer.sources.sdp import parse_sdp, payload_map

ADDR = ("127.0.0.1", 40000)
U_LOUD = bytes([0x80]) * 160  # 20 ms of μ-law +32124


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = U_LOUD, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def bye(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x81, 203, 1, ssrc)


def run(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), 20))


async def consume(src: RtpSource, out: list[tuple[float, AudioChunk]]) -> None:
    async for c in src.chunks():
        out.append((time.monotonic(), c))


def test_silence_is_released_when_due_without_any_packet() -> None:
    """A talkspurt, then nothing (DTX, or the phone stopped): the silence after it comes out
    in real time, one window after it was due, not when (or if) packets come back."""

    async def main() -> tuple[float, list[tuple[float, AudioChunk]]]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=40, idle_timeout_s=5.0)
        await src.start()
        got: list[tuple[float, AudioChunk]] = []
        task = asyncio.create_task(consume(src, got))
        t0 = time.monotonic()
        for i in range(10):  # 200 ms of speech, paced (arrival times exact: sleeps overshoot)
            src.feed_datagram(rtp(i, i * 160, 7), ADDR, arrival_s=t0 + i * 0.02)
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        await src.close()
        await task
        return t0, got

    t0, got = run(main)
    silent = [(t, c) for t, c in got if c.start_s >= 0.25 and not c.final]
    assert sum(c.pcm.size for _, c in silent) >= 0.5 * 16000  # ~0.8 s of silence flowed
    for t, c in silent:
        assert not c.pcm.any()
        # media time c.end_s arrived (nominally) at t0 + c.end_s; released within the window,
        # the start-up spread and one chunk
        assert t - t0 - c.end_s < 0.04 + INITIAL_SPREAD_S + 0.05, (c.end_s, t - t0)
        assert c.wall_end is not None


def test_comfort_noise_is_silence_and_counted() -> None:
    async def main() -> tuple[dict[str, int], np.ndarray]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0)
        await src.start()
        for i in range(5):
            src.feed_datagram(rtp(i, i * 160, 3), ADDR)
        src.feed_datagram(rtp(5, 800, 3, bytes([40]), pt=13), ADDR)  # CN at -40 dBov
        src.feed_datagram(rtp(6, 8000, 3), ADDR)  # speech again 0.9 s later in media time
        await src.close()
        pcm = np.concatenate([c.pcm async for c in src.chunks()])
        return src.stats, pcm

    stats, pcm = run(main)
    assert stats["comfort_noise"] == 1 and stats["unsupported_payload"] == 0
    assert pcm.size >= (8000 + 160) * 2
    assert not pcm[int(0.11 * 16000) : int(0.99 * 16000)].any()  # CN gave no sound


def test_streams_share_one_session_clock() -> None:
    async def main() -> dict[str, float]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0)
        await src.start()
        t = time.monotonic()  # arrival times given: an oversleep must not move the clock
        for i in range(3):
            src.feed_datagram(rtp(i, 5000 + i * 160, 1), ADDR, arrival_s=t)
        await asyncio.sleep(0.3)
        for i in range(3):
            src.feed_datagram(rtp(i, 777 + i * 160, 2), ("127.0.0.1", 40002), arrival_s=t + 0.3)
        await src.close()
        first: dict[str, float] = {}
        async for c in src.chunks():
            first.setdefault(c.channel, c.start_s)
        assert src.origin_wall is not None and abs(src.origin_wall - time.time()) < 2
        return first

    first = run(main)
    assert first["ssrc-00000001"] == 0.0
    assert first["ssrc-00000002"] == pytest.approx(0.3, abs=0.05)  # it started 0.3 s later


def test_phantom_ssrcs_never_reach_the_segmenter_and_expire() -> None:
    """Random packets (one per random SSRC) stay on probation, produce no chunks, and are
    forgotten after a second; one address owns at most ``max_streams_per_source`` streams."""

    async def main() -> tuple[dict[str, int], set[str], int]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0, idle_timeout_s=5, max_streams_per_source=4)
        await src.start()
        got: list[tuple[float, AudioChunk]] = []
        task = asyncio.create_task(consume(src, got))
        rng = np.random.default_rng(5)
        for k in range(100):  # a flood from many ports: one packet per random SSRC
            ssrc = int(rng.integers(1, 1 << 32))
            src.feed_datagram(rtp(int(rng.integers(0, 65536)), 0, ssrc), ("10.9.9.9", 1000 + k))
        for ssrc in range(100, 110):  # ten real-looking streams from one address
            for i in range(3):
                src.feed_datagram(rtp(i, i * 160, ssrc), ("10.0.0.5", 5004))
        await asyncio.sleep(1.3)
        held = len(src._streams)
        await src.close()
        await task
        return src.stats, {c.channel for _, c in got}, held

    stats, channels, held = run(main)
    assert stats["streams_unconfirmed"] == 100 and held == 4
    assert stats["over_source_cap"] == 6 * 3 and stats["streams_started"] == 4
    assert channels == {f"ssrc-{s:08x}" for s in range(100, 104)}


def test_first_sender_owns_the_ssrc_and_its_bye() -> None:
    async def main() -> tuple[dict[str, int], list[AudioChunk]]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0, idle_timeout_s=30)
        await src.start()
        owner, stranger = ("10.0.0.5", 5004), ("10.0.0.66", 5004)
        for i in range(5):
            src.feed_datagram(rtp(i, i * 160, 9), owner)
            src.feed_datagram(rtp(100 + i, 99 + i * 160, 9, bytes([0x00]) * 160), stranger)
        src.feed_datagram(bye(9), stranger)
        src.feed_datagram(bye(9), ("10.0.0.5", 6000), rtcp_port=True)  # same host, other port
        assert src.stats["streams_ended"] == 0
        src.feed_datagram(bye(9), ("10.0.0.5", 5005), rtcp_port=True)  # RTCP from port + 1
        chunks = []
        async for c in src.chunks():
            chunks.append(c)
            if c.final:
                await src.close()
        return src.stats, chunks

    stats, chunks = run(main)
    assert stats["foreign_source"] == 5 and stats["foreign_bye"] == 2
    assert stats["streams_ended_bye"] == 1 and chunks[-1].final
    pcm = np.concatenate([c.pcm for c in chunks])
    assert np.median(pcm[: 5 * 320]) > 30000  # only the owner's loud audio


def test_resumed_ssrc_continues_its_media_clock() -> None:
    """After the idle timeout ended it, the same sender comes back: its timestamps (which ran
    on during the gap) place it, not its arrival."""

    async def main() -> list[AudioChunk]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0, idle_timeout_s=0.2, exit_when_idle_s=0.8)
        await src.start()
        got: list[tuple[float, AudioChunk]] = []
        task = asyncio.create_task(consume(src, got))
        for i in range(3):
            src.feed_datagram(rtp(i, i * 160, 4), ADDR)
        await asyncio.sleep(0.5)
        # 0.5 s of wall time later, the timestamps say 0.7 s: the sender's clock rules
        for i in range(3, 6):
            src.feed_datagram(rtp(i, 5600 + i * 160, 4), ADDR)
        await task
        assert src.stats["streams_resumed"] == 1
        return [c for _, c in got]

    chunks = run(main)
    loud = [c for c in chunks if np.abs(c.pcm).max() > 20000]
    resumed = [c for c in loud if c.start_s > 0.2]
    assert resumed and resumed[0].start_s == pytest.approx(0.7 + 3 * 0.02, abs=0.01)


def test_playout_clock_spread_and_restart() -> None:
    clock = PlayoutClock(8000, max_jump_s=2.0)
    for k in range(40):  # 4 packets of 20 ms every 80 ms (a bursty sender)
        for j in range(4):
            clock.observe((4 * k + j) * 160, k * 0.08, 8000)
    assert clock.spread_s == pytest.approx(0.06, abs=0.005)  # learned: 80 ms gap - 20 ms media
    t = 39 * 0.08
    due = clock.due_ticks(t + 0.5, 0.04)
    assert due == pytest.approx(clock.newest_ts + (0.5 - 0.04 - 0.06) * 8000, abs=2)
    clock.observe(1000, t + 0.1, 8000)  # the sender restarted far back: re-anchored
    assert clock.newest_ts == 1000


def test_payload_map_refuses_what_cannot_be_decoded() -> None:
    with pytest.raises(SourceError, match="cannot decode G729"):
        payload_map({18: "G729/8000"})
    with pytest.raises(SourceError, match="Opus's RTP clock is 48000"):
        payload_map({111: "opus/16000/1"})
    fmts = payload_map({111: "opus/48000/2"})
    assert fmts[9].encoding == "G722" and fmts[9].audio_rate_hz == 16000
    assert fmts[111].audio_rate_hz == 48000 and fmts[13].encoding == "CN"
    # an SDP offer may list codecs emomon cannot decode: kept, so packets count as unsupported
    sdp = parse_sdp("v=0\nm=audio 4000 RTP/AVP 18 111\na=rtpmap:18 G729/8000\n")
    assert not payload_map(None, sdp)[18].supported


def test_undecodable_payload_warns_once_per_stream(caplog: pytest.LogCaptureFixture) -> None:
    """G.729 (PT 18): counted, and one WARNING at the default log level, not one per packet."""

    async def main() -> dict[str, int]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0)
        await src.start()
        for i in range(50):
            src.feed_datagram(rtp(i, i * 160, 0x729, bytes(20), pt=18), ADDR)
        for i in range(3):  # a PCMU stream that switches to G.729 mid-call
            src.feed_datagram(rtp(i, i * 160, 0x711), ("127.0.0.1", 40002))
        for i in range(3, 30):
            src.feed_datagram(rtp(i, i * 160, 0x711, bytes(20), pt=18), ("127.0.0.1", 40002))
        await src.close()
        async for _ in src.chunks():
            pass
        return src.stats

    with caplog.at_level("WARNING"):
        stats = run(main)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert stats["unsupported_payload"] == 50 + 27
    assert len(warnings) == 2, warnings
    assert "payload type 18" in warnings[0] and "SSRC 00000729" in warnings[0]
    assert "ssrc-00000711" in warnings[1]


def test_sdp_clock_mistakes_for_g722_and_opus_take_the_rfc_clock() -> None:
    sdp = parse_sdp(
        "v=0\nm=audio 4000 RTP/AVP 98 99 101\na=rtpmap:98 G722/16000\n"
        "a=rtpmap:99 opus/16000/1\na=rtpmap:101 telephone-event/8000\n"
    )
    fmts = payload_map(None, sdp)
    assert (fmts[98].clock_rate_hz, fmts[98].audio_rate_hz) == (8000, 16000)
    assert fmts[99].clock_rate_hz == 48000 and fmts[101].encoding == "TELEPHONE-EVENT"
