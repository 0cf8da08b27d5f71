"""Real RTP from ffmpeg on loopback into RtpSource: PCMU, PCMA, L16/16 kHz (SDP), two senders,
and a lossy relay. Audio is checked against the recording itself (alignment, SNR), and the
counters against what the relay logged. ffmpeg paces in real time (``-re``): short excerpts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from rtp_helpers import (
    FFMPEG,
    SR,
    LossyRelay,
    collect,
    compare,
    ffmpeg_rtp_args,
    free_port_pair,
    reference,
    run_ffmpeg,
)

from emomon.streamer.sources.rtp import RtpSource

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (apt-get install ffmpeg)"),
]

START_S, DUR_S = 6.0, 5.0  # 6-11 s of the call: both people speak
# SNR floors measured on this machine with margin (see docs/RTP.md): G.711 against the file
# band-limited through 8 kHz (ffmpeg's resampler and ours differ a little), L16 bit-exact.
MIN_SNR_DB = {"pcmu": 30.0, "pcma": 30.0, "l16": 90.0}  # measured: 37.3, 37.4, bit-exact


def run(coro, timeout_s: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "l16"])
def test_ffmpeg_sends_the_call(codec: str, tmp_path: Path) -> None:
    port = free_port_pair()
    sdp = tmp_path / "call.sdp" if codec == "l16" else None

    async def main():
        kwargs = {}
        if sdp is not None:
            # ffmpeg writes the SDP when it starts; the receiver needs it before the first packet,
            # so write the same rtpmap ffmpeg will use (checked against ffmpeg's own file below).
            sdp.write_text("v=0\nm=audio 0 RTP/AVP 97\na=rtpmap:97 L16/16000/1\n")
            kwargs["sdp_path"] = str(sdp)
        src = RtpSource(
            "127.0.0.1", port, jitter_ms=60, idle_timeout_s=3.0, exit_when_idle_s=15, **kwargs
        )
        await src.start()
        assert src.rtcp_port == port + 1
        args = ffmpeg_rtp_args(
            port,
            codec,
            START_S,
            DUR_S,
            ssrc=0xCAFE0001,
            seq=65400 if codec == "l16" else None,  # crosses the 16-bit wrap after 136 packets
            sdp_file=tmp_path / "ffmpeg.sdp",
            packets_20ms=codec
            != "pcma",  # PCMA: ffmpeg's default 126 ms packets, as in docs/RTP.md
        )
        sent = asyncio.create_task(run_ffmpeg(args))
        got = await collect(src, streams=1)
        await sent
        return src, got

    src, got = run(main())
    if sdp is not None:
        assert "a=rtpmap:97 L16/16000/1" in (tmp_path / "ffmpeg.sdp").read_text()
    assert list(got.chunks) == ["ssrc-cafe0001"]
    chunks = got.chunks["ssrc-cafe0001"]
    pcm = got.audio("ssrc-cafe0001")
    st = src.stats
    assert st["streams_started"] == st["streams_ended"] == 1
    assert (st["lost"], st["duplicate"], st["malformed"], st["unsupported_payload"]) == (0, 0, 0, 0)
    # ffmpeg's 182 ms PCMA packets: its last, 2 ms packet (flushed at end of file) may come
    # after its media time was already played as silence (the receiver no longer waits for
    # packets that may never come, #15): counted as late.
    assert st["late"] <= (1 if codec == "pcma" else 0)
    assert st["rtcp"] >= 1  # sender reports and the BYE on port+1
    # Ended by the BYE, not the 3 s idle timeout.
    assert st["streams_ended_bye"] == 1 and chunks[-1].final
    assert all(c.pcm.size <= 320 for c in chunks)  # 20 ms chunks: low latency
    # Timeline: contiguous from 0, as long as the excerpt.
    assert chunks[0].start_s == 0.0
    assert all(abs(b.start_s - a.end_s) < 1e-6 for a, b in zip(chunks, chunks[1:], strict=False))
    # as long as the excerpt, plus the silence that came due before the BYE arrived (#15)
    assert DUR_S - 0.05 < pcm.size / SR < DUR_S + 0.3
    # Same audio, same time: aligned within 1 sample (0.06 ms), SNR above the floor.
    m = compare(pcm, reference(codec, START_S, DUR_S))
    assert abs(m.lag_samples) <= 1, m
    assert m.snr_db >= MIN_SNR_DB[codec], m
    # Real-time pacing: chunks come out as the audio is sent, with no accumulating delay. ffmpeg -re
    # sends in bursts of one WAV read (128 ms), so single chunks may be early/late by that much.
    t = np.array(got.times["ssrc-cafe0001"]) - got.times["ssrc-cafe0001"][0]
    ends = np.array([c.end_s for c in chunks])
    lateness = t - ends
    assert lateness.max() - lateness.min() < 0.8, (lateness.min(), lateness.max())
    assert abs(np.polyfit(ends, lateness, 1)[0]) < 0.04  # s of delay gained per s of audio


def test_two_senders_are_two_speakers() -> None:
    port = free_port_pair()
    names = {"0xA11CE": "Diane", str(0xB0B): "Sheila"}
    halves = {0xA11CE: (6.0, 4.0), 0xB0B: (14.0, 4.0)}

    async def main():
        src = RtpSource(
            "127.0.0.1", port, idle_timeout_s=3.0, exit_when_idle_s=15, ssrc_names=names
        )
        await src.start()
        senders = [
            asyncio.create_task(run_ffmpeg(ffmpeg_rtp_args(port, "pcmu", s, d, ssrc=ssrc)))
            for ssrc, (s, d) in halves.items()
        ]
        got = await collect(src, streams=2)
        await asyncio.gather(*senders)
        return src, got

    src, got = run(main())
    assert set(got.chunks) == {"ssrc-000a11ce", "ssrc-00000b0b"}
    assert {c.speaker for c in got.chunks["ssrc-000a11ce"]} == {"Diane"}
    assert {c.speaker for c in got.chunks["ssrc-00000b0b"]} == {"Sheila"}
    for ssrc, (s, d) in halves.items():
        m = compare(got.audio(f"ssrc-{ssrc:08x}"), reference("pcmu", s, d))
        assert abs(m.lag_samples) <= 1 and m.snr_db >= MIN_SNR_DB["pcmu"], (ssrc, m)
    assert src.stats["streams_ended"] == 2 and src.stats["lost"] == 0
    assert set(src.stats_by_ssrc()) == {"ssrc-000a11ce", "ssrc-00000b0b"}


@pytest.mark.parametrize("seed", [7])
def test_lossy_relay_counts_match_the_relay_log(seed: int) -> None:
    port = free_port_pair()
    relay_port = free_port_pair()

    async def main():
        # A window well above the relay's 50 ms worst delay: on 2 shared cores the loop can stall.
        src = RtpSource("127.0.0.1", port, jitter_ms=200, idle_timeout_s=3.0, exit_when_idle_s=15)
        await src.start()
        loop = asyncio.get_running_loop()
        relay = LossyRelay(("127.0.0.1", port), seed)
        t_rtp, _ = await loop.create_datagram_endpoint(
            lambda: relay, local_addr=("127.0.0.1", relay_port)
        )
        t_rtcp, _ = await loop.create_datagram_endpoint(
            lambda: relay, local_addr=("127.0.0.1", relay_port + 1)
        )
        sender = asyncio.create_task(
            run_ffmpeg(ffmpeg_rtp_args(relay_port, "pcmu", START_S, DUR_S, ssrc=42))
        )
        got = await collect(src, streams=1)
        await sender
        t_rtp.close()
        t_rtcp.close()
        return src, got, relay

    src, got, relay = run(main())
    lost, dup = relay.expected_counts()
    st = src.stats
    assert (
        len(relay.dropped) >= 5 and dup >= 3 and len(relay.delayed) >= 10
    )  # the relay did its job
    assert (st["lost"], st["duplicate"], st["late"]) == (lost, dup, 0), (st, relay.dropped)
    assert st["reordered"] > 0
    assert relay.rtcp >= 1 and st["rtcp"] >= 1  # the BYE came through rtcp-mux on the RTP port
    per = src.stats_by_ssrc()["ssrc-0000002a"]
    assert (per["lost"], per["duplicate"]) == (lost, dup)
    # The audio is all there in time order: lost 20 ms packets are silence, the rest matches.
    pcm = got.audio("ssrc-0000002a")
    # as long as the excerpt, plus the silence that came due before the BYE arrived (#15)
    assert DUR_S - 0.05 < pcm.size / SR < DUR_S + 0.3
    m = compare(pcm, reference("pcmu", START_S, DUR_S))
    assert abs(m.lag_samples) <= 1 and m.corr > 0.9, m


def test_asterisk_external_media_slin16_as_the_recipe_configures_it() -> None:
    """What Asterisk's ExternalMedia sends for format=slin16 (no Asterisk on this machine, so a
    faithful stand-in): PT 118 (Asterisk's slin16), 20 ms of big-endian 16 kHz L16, random SSRC
    and sequence, marker on the first packet. docs/RTP.md maps 118 with rtp_payload_types."""
    import random
    import socket
    import struct

    from rtp_helpers import load_call

    pcm = load_call()[int(START_S * SR) : int((START_S + 2.0) * SR)]
    rnd = random.Random(3)
    ssrc, seq, ts = rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(32)

    async def main():
        src = RtpSource(
            "127.0.0.1",
            0,
            payload_types={118: "L16/16000/1"},
            idle_timeout_s=0.3,
            exit_when_idle_s=0.3,
        )
        await src.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(0, pcm.size, 320):
                hdr = struct.pack(
                    "!BBHII",
                    0x80,
                    (0x80 if i == 0 else 0) | 118,
                    (seq + i // 320) & 0xFFFF,
                    (ts + i) & 0xFFFFFFFF,
                    ssrc,
                )
                s.sendto(
                    hdr + pcm[i : i + 320].astype(">i2").tobytes(), ("127.0.0.1", src.bound_port)
                )
                if i % 3200 == 0:
                    await asyncio.sleep(0.01)
        return src, await collect(src)

    src, got = run(main())
    out = got.audio(f"ssrc-{ssrc:08x}")
    assert (out[: pcm.size] == pcm).all()
    assert src.stats["lost"] == 0 and src.stats["unsupported_payload"] == 0
