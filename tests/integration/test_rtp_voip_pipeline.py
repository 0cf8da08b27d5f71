"""A call as real phones send it, through the whole pipeline (issue #15).

Three legs of one call reach one receiver, each from ffmpeg through a relay that does what a
phone with silence suppression does (no packets in silence, 20 ms pacing): PCMU and G.722 open
each silence with a comfort-noise packet and end with RTCP BYE; Opus (dynamic PT from an SDP)
sends no CN and no BYE, so its stream ends by the idle timeout. Each leg has a silence longer
than the idle timeout in the middle. The legs start 0.7 s apart; the same WAV is also replayed
from the file (not in real time) for reference transcripts.

Checked: transcripts match the file replay; every event's ``latency_ms`` agrees within 100 ms
with the delay measured outside (send time of the packet holding the end of speech → event
handed to the sinks); every utterance closes within hang-over + window + spread of its end of
speech in media time, each leg's last one included (before #15 it waited for packets or the
idle timeout); the legs resume after the long gap as the same channel, speaker and clock; all
legs share one session clock; counters; the file replay claims no latency.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rtp_helpers import (
    CLOCK_HZ,
    FFMPEG,
    DtxRelay,
    ffmpeg_rtp_args,
    free_port_pair,
    opus_sdp,
    run_ffmpeg,
    speech_with_gaps,
    start_relay,
    write_wav,
)

from emomon.services.events import EmotionEvent
from emomon.services.settings import Settings
from emomon.streamer.sources.file import FileSource
from emomon.streamer.sources.rtp import RtpSource

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (apt-get install ffmpeg)"),
]

SPEECH = [(6.0, 2.5), 1.5, (14.0, 2.5), 4.5, (17.0, 2.5), 1.0]  # 14.5 s
SILENCES = [(2.5, 4.0), (6.5, 11.0), (13.5, 14.5)]
IDLE_S, WINDOW_S, HANGOVER_S = 3.0, 0.06, 0.3
LEGS = {  # codec: (SSRC, start offset s, comfort noise and BYE)
    "pcmu": (0xA1, 0.0, True),
    "g722": (0xB2, 0.7, True),
    "opus": (0xC3, 1.4, False),
}


class CaptureSink:
    name = "capture"

    def __init__(self) -> None:
        self.got: list[tuple[EmotionEvent, float]] = []

    async def start(self) -> None:
        return None

    async def publish(self, event: EmotionEvent) -> None:
        self.got.append((event, time.time()))

    async def close(self) -> None:
        return None


def words(text: str) -> Counter[str]:
    return Counter(re.findall(r"[a-z']+", text.lower()))


def recall(got: Counter[str], want: Counter[str]) -> float:
    return sum((got & want).values()) / max(1, sum(want.values()))


def test_a_silence_suppressed_call_in_three_codecs(tmp_path: Path) -> None:
    from emomon.services.pipeline import Pipeline
    from emomon.services.worker import FusionWorker

    settings = Settings.model_validate(
        {
            "console": {"enabled": False},
            "speakers": {"mode": "channel"},
            "vad": {"hangover_ms": int(HANGOVER_S * 1000)},
        }
    )
    wav = write_wav(tmp_path / "call.wav", speech_with_gaps(SPEECH))
    port = free_port_pair()
    sdp = opus_sdp(tmp_path / "offer.sdp")
    sink = CaptureSink()

    async def main() -> tuple[RtpSource, dict[str, DtxRelay]]:
        rtp = RtpSource(
            "127.0.0.1",
            port,
            jitter_ms=int(WINDOW_S * 1000),
            idle_timeout_s=IDLE_S,
            exit_when_idle_s=2.5,  # longer than the mid-call gap outlasts the idle timeout
            sdp_path=str(sdp),
        )
        pipeline = Pipeline(settings, [sink], worker=FusionWorker(settings.worker))
        ready = asyncio.Event()
        running = asyncio.create_task(
            pipeline.run([("call", rtp), ("file", FileSource(wav))], on_ready=ready.set)
        )
        await ready.wait()  # warmed up and listening: now the phones call
        loop = asyncio.get_running_loop()
        relays, transports, senders = {}, [], []
        for codec, (ssrc, offset, cn) in LEGS.items():
            relay = relays[codec] = DtxRelay(
                ("127.0.0.1", port), CLOCK_HZ[codec], SILENCES, cn=cn, pace_s=0.25
            )
            relay_port = free_port_pair()
            transports += await start_relay(loop, relay, relay_port)
            args = ffmpeg_rtp_args(relay_port, codec, 0.0, 14.5, ssrc=ssrc, wav=wav, send_bye=cn)
            senders.append(run_ffmpeg(args, delay_s=offset))
        await asyncio.gather(*senders)
        try:
            await running
        finally:
            pipeline.close()
            for t in transports:
                t.close()
        return rtp, relays

    rtp, relays = asyncio.run(asyncio.wait_for(main(), 240))
    events = [(e, t) for e, t in sink.got if e.session == "call"]
    ref = sorted((e for e, _ in sink.got if e.session == "file"), key=lambda e: e.start_s)
    assert ref and all(e.latency_ms is None for e in ref)  # a fast replay claims no latency
    assert all(e.started_at and e.session_started_at for e in ref)

    st = rtp.stats
    print({k: st[k] for k in ("packets", "late", "lost", "comfort_noise", "streams_resumed")})
    assert st["streams_started"] == 6 and st["streams_resumed"] == 3, st  # each leg resumed
    assert st["streams_ended_bye"] == 2 and st["comfort_noise"] == 2 * 3, st
    assert st["unsupported_payload"] == st["malformed"] == st["foreign_source"] == 0, st
    assert st["late"] <= 3, st

    origin = min(r.sent[0][0] for r in relays.values())
    report = []
    first_start: dict[str, float] = {}
    for codec, (ssrc, _, _) in LEGS.items():
        ch = f"ssrc-{ssrc:08x}"
        leg = sorted(((e, t) for e, t in events if e.channel == ch), key=lambda x: x[0].start_s)
        assert len(leg) >= 3, (codec, [e.text for e, _ in leg])
        assert {e.speaker for e, _ in leg} == {ch}  # the same speaker before and after the gap
        relay = relays[codec]
        offset = relay.sent[0][0] - origin  # the leg's own time 0 on the session clock
        first_start[codec] = leg[0][0].start_s - offset
        # the utterance after the long gap sits at its media time, not at a re-based arrival
        after = [e for e, _ in leg if e.start_s - offset > 10.0]
        assert after and abs(after[0].start_s - offset - 11.0) < 0.6, (codec, after[0].start_s)
        got = words(" ".join(e.text or "" for e, _ in leg))
        r = recall(got, words(" ".join(e.text or "" for e in ref)))
        assert r >= 0.6, (codec, r, [e.text for e, _ in leg], [e.text for e in ref])
        for e, emitted in leg:
            sent = relay.send_time_of(e.end_s - offset)  # the packet holding the end of speech
            external_ms = (emitted - sent) * 1000
            assert e.latency_ms is not None
            report.append(
                f"{codec} {e.start_s:6.2f}-{e.end_s:6.2f} s: latency_ms {e.latency_ms:6.0f}, "
                f"measured {external_ms:6.0f}, closed after {e.stage_ms['vad_hangover']:4.0f} ms"
                f" {e.text!r}"
            )
            assert abs(e.latency_ms - external_ms) < 100, report[-1]
            # closed by silence that was due, not by packets resuming or the idle timeout
            assert e.stage_ms["vad_hangover"] < 1000 * (HANGOVER_S + WINDOW_S + 0.2) + 250, report[
                -1
            ]
            assert e.started_at is not None and e.ended_at is not None
    print("\n".join(report))
    # one clock: the same words start at the same media time in every leg
    assert max(first_start.values()) - min(first_start.values()) < 0.15, first_start
    delays = [float(line.split("measured")[1].split(",")[0]) for line in report]
    print(f"emit - end of speech sent (ms): p50 {np.median(delays):.0f}, max {max(delays):.0f}")
