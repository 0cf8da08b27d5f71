"""What real VoIP senders do, with ffmpeg as the sender (issues #15 and #18), at the source:

* G.722 (PT 9: 16 kHz audio on an 8000 Hz RTP clock) and Opus (a dynamic PT from an SDP
  ``rtpmap``) decode to the excerpt that was sent, aligned in time;
* silence suppression: while a phone sends nothing (DTX, after a comfort-noise packet) media
  time still passes — the silence is released when due, not when packets resume — and after a
  gap longer than the idle timeout the same SSRC continues on the same clock;
* sender pinning: packets and an RTCP BYE for a live SSRC from another address (a raw-socket
  spoofer) change nothing but counters.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from rtp_helpers import (
    CLOCK_HZ,
    FFMPEG,
    SR,
    DtxRelay,
    collect,
    compare,
    ffmpeg_rtp_args,
    free_port_pair,
    opus_sdp,
    reference,
    run_ffmpeg,
    speech_with_gaps,
    start_relay,
    write_wav,
)

from emomon.streamer.sources.rtp import RtpSource

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (apt-get install ffmpeg)"),
]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 90))


def test_g722_and_opus_decode_to_what_was_sent(tmp_path: Path) -> None:
    port = free_port_pair()
    sdp = opus_sdp(tmp_path / "offer.sdp")
    excerpt = {"g722": (6.0, 3.0), "opus": (14.0, 3.0)}
    ssrc = {"g722": 0x6722, "opus": 0x0905}

    async def main():  # type: ignore[no-untyped-def]
        src = RtpSource("127.0.0.1", port, idle_timeout_s=3.0, sdp_path=str(sdp))
        await src.start()
        senders = [
            run_ffmpeg(ffmpeg_rtp_args(port, codec, *excerpt[codec], ssrc=ssrc[codec]))
            for codec in excerpt
        ]
        sending = asyncio.gather(*senders)
        got = await collect(src, streams=2)
        await sending
        return src, got

    src, got = run(main())
    st = src.stats
    assert st["unsupported_payload"] == 0 and st["malformed"] == 0 and st["lost"] == 0, st
    for codec, (start, dur) in excerpt.items():
        pcm = got.audio(f"ssrc-{ssrc[codec]:08x}")
        # as long as the excerpt (+ the silence due before the BYE ended it)
        assert dur - 0.05 < pcm.size / SR < dur + 0.5, (codec, pcm.size / SR)
        ref = reference(codec, start, dur)
        m = compare(pcm, ref, max_lag=800 if codec == "g722" else 1600)
        # Lossy codecs: not bit-exact, but the same waveform at the same time, up to the
        # codec's own delay: G.722's QMF filters 22 samples (1.4 ms), Opus's encoder
        # look-ahead 6.5 ms (its pre-skip, which RTP does not signal).
        assert m.corr > 0.9, (codec, m)
        assert abs(m.lag_samples) <= (24 if codec == "g722" else 200), (codec, m)
        print(f"{codec}: {m}")


def test_dtx_silence_is_released_when_due_and_a_long_gap_keeps_the_clock(
    tmp_path: Path,
) -> None:
    """A phone with silence suppression: 2 s speech, 1.5 s nothing (CN first), 2 s speech,
    then 4.5 s nothing (longer than the 3 s idle timeout), 2 s speech."""
    speech = [(6.0, 2.0), 1.5, (14.0, 2.0), 4.5, (17.0, 2.0)]
    wav = write_wav(tmp_path / "dtx.wav", speech_with_gaps(speech))
    silences = [(2.0, 3.5), (5.5, 10.0)]
    port, relay_port = free_port_pair(), free_port_pair()
    ssrc = 0xD7C0

    async def main():  # type: ignore[no-untyped-def]
        src = RtpSource("127.0.0.1", port, jitter_ms=60, idle_timeout_s=3.0)
        await src.start()
        relay = DtxRelay(("127.0.0.1", port), 8000, silences)
        transports = await start_relay(asyncio.get_running_loop(), relay, relay_port)
        args = ffmpeg_rtp_args(relay_port, "pcmu", 0.0, 12.0, ssrc=ssrc, wav=wav)
        sending = asyncio.create_task(run_ffmpeg(args))
        got = await collect(src, streams=2)  # the idle end mid-call, then the BYE at the end
        await sending
        for t in transports:
            t.close()
        return src, got, relay

    src, got, relay = run(main())
    ch = f"ssrc-{ssrc:08x}"
    chunks = got.chunks[ch]
    st = src.stats
    assert relay.cn_sent == 2 and relay.suppressed > 200
    # the relay forwards from this test's own event loop: on a loaded machine a packet may reach
    # the receiver after its media time was played as silence (counted late, its audio cut)
    assert st["comfort_noise"] == 2 and st["lost"] == 0 and st["late"] <= 2, st
    assert st["streams_started"] == 2 and st["streams_resumed"] == 1, st  # idle end mid-call
    assert st["streams_ended_bye"] == 1
    assert {c.channel for c in chunks} == {ch} and {c.speaker for c in chunks} == {ch}
    # One clock: chunk times follow the media times of the WAV, the resumed stream included.
    t0 = relay.sent[0][0]
    for c, when in zip(chunks, got.times[ch], strict=True):
        # media time c.end_s was sent at t0 + c.end_s; silence is yielded once it was due
        # (window 60 ms + the sender's burstiness), never seconds later
        lag = (when - t0) - c.end_s
        assert lag < 0.6, (c.start_s, c.end_s, lag)
    resumed = next(c for c in chunks if c.start_s >= 9.9 and np.abs(c.pcm).max() > 500)
    assert abs(resumed.start_s - 10.0) < 0.1, resumed.start_s  # not re-based on arrival
    ref = speech_with_gaps(speech).astype(np.float64)
    pcm = np.zeros(ref.size + SR, dtype=np.float64)  # the chunks placed at their session times
    for c in chunks:
        i = int(round(c.start_s * SR))
        pcm[i : i + c.pcm.size] = c.pcm[: max(0, pcm.size - i)]
    for a, b in ((0.0, 2.0), (3.5, 5.5), (10.0, 12.0)):  # each talkspurt where it was spoken
        seg = slice(int(a * SR), int(b * SR))
        m = compare(pcm[seg], ref[seg])
        assert abs(m.lag_samples) <= 2 and m.corr > 0.95, (a, m)


def _spoof_rtp(seq: int, ts: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, ts, ssrc) + bytes([0x80]) * 160  # loud μ-law


def _spoof_bye(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x81, 203, 1, ssrc)


def test_spoofed_bye_and_foreign_packets_change_nothing_but_counters() -> None:
    """Another address sends RTP with a live caller's SSRC and an RTCP BYE for it (to the RTP
    port, rtcp-mux, and to port+1): the caller's stream goes on untouched."""
    port = free_port_pair()
    ssrc = 0xCA11E7
    start, dur = 6.0, 4.0

    async def main():  # type: ignore[no-untyped-def]
        src = RtpSource("127.0.0.1", port, idle_timeout_s=3.0)
        await src.start()
        args = ffmpeg_rtp_args(port, "pcmu", start, dur, ssrc=ssrc)
        sending = asyncio.create_task(run_ffmpeg(args))

        async def spoof() -> None:
            while src.stats["streams_started"] == 0:
                await asyncio.sleep(0.02)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(50):
                    s.sendto(_spoof_rtp(1000 + i, 160 * i, ssrc), ("127.0.0.1", port))
                    await asyncio.sleep(0.01)
                s.sendto(_spoof_bye(ssrc), ("127.0.0.1", port))
                s.sendto(_spoof_bye(ssrc), ("127.0.0.1", port + 1))

        spoofing = asyncio.create_task(spoof())
        got = await collect(src, streams=1)
        await asyncio.gather(sending, spoofing)
        return src, got

    t0 = time.monotonic()
    src, got = run(main())
    st = src.stats
    assert st["foreign_source"] == 50 and st["foreign_bye"] == 2, st
    assert st["streams_started"] == 1 and st["streams_ended_bye"] == 1, st  # the real BYE
    assert st["late"] == st["lost"] == st["duplicate"] == 0, st
    pcm = got.audio(f"ssrc-{ssrc:08x}")
    m = compare(pcm, reference("pcmu", start, dur))
    assert abs(m.lag_samples) <= 1 and m.snr_db >= 30, m  # the caller's audio, untouched
    assert time.monotonic() - t0 > dur - 0.5  # the stream lasted until the caller's own BYE


def test_clock_rates_of_the_codecs_are_what_ffmpeg_sends() -> None:
    """The table the relays rely on matches the payload formats the receiver uses."""
    from emomon.streamer.sources.sdp import STATIC_PAYLOAD_TYPES, parse_encoding

    assert STATIC_PAYLOAD_TYPES[0].clock_rate_hz == CLOCK_HZ["pcmu"]
    assert STATIC_PAYLOAD_TYPES[9].clock_rate_hz == CLOCK_HZ["g722"]
    assert STATIC_PAYLOAD_TYPES[9].audio_rate_hz == 16000
    assert parse_encoding("opus/48000/2").clock_rate_hz == CLOCK_HZ["opus"]
