"""A silence-suppressed call through the whole pipeline, measured from outside (issue #15).

Each leg is ffmpeg → :class:`~rtp_helpers.DtxRelay` (a phone with DTX: nothing in silence,
optional comfort noise and BYE, 20 ms pacing) → one :class:`RtpSource`; the pipeline's events
are captured with the wall time each reached the sinks, and every relay logs when it sent each
packet. Used by ``test_rtp_voip_pipeline.py`` and ``benchmarks/bench_rtp_dtx.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtp_helpers import (
    CLOCK_HZ,
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

# 14.5 s: speech, a 1.5 s pause, speech, a 4.5 s pause, speech, 1 s of silence
SPEECH: tuple[tuple[float, float] | float, ...] = (
    (6.0, 2.5), 1.5, (14.0, 2.5), 4.5, (17.0, 2.5), 1.0,
)  # fmt: skip
SILENCES = ((2.5, 4.0), (6.5, 11.0), (13.5, 14.5))  # media time the phones send nothing
DURATION_S = 14.5


@dataclass(frozen=True)
class Leg:
    codec: str  # pcmu | g722 | opus (rtp_helpers.CODECS)
    ssrc: int
    offset_s: float  # when it starts after the first leg
    cn_and_bye: bool  # comfort noise at each silence and RTCP BYE at the end


LEGS = (Leg("pcmu", 0xA1, 0.0, True), Leg("g722", 0xB2, 0.7, True), Leg("opus", 0xC3, 1.4, False))


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


@dataclass
class CallResult:
    events: list[tuple[EmotionEvent, float]]  # (event, wall time it reached the sinks)
    relays: dict[str, DtxRelay]
    rtp_stats: dict[str, int]
    legs: Sequence[Leg]
    reference: list[EmotionEvent] = field(default_factory=list)  # the file replay's events

    @property
    def origin(self) -> float:
        return min(r.sent[0][0] for r in self.relays.values())

    def leg_events(self, leg: Leg) -> list[tuple[EmotionEvent, float]]:
        ch = f"ssrc-{leg.ssrc:08x}"
        return sorted(
            ((e, t) for e, t in self.events if e.channel == ch), key=lambda x: x[0].start_s
        )

    def offset(self, leg: Leg) -> float:
        """The leg's time 0 on the session clock, from the relays' send times."""
        return self.relays[leg.codec].sent[0][0] - self.origin

    def speech_end_sent(self, leg: Leg, event: EmotionEvent) -> float:
        """Wall time the packet holding the event's end of speech was sent (for an end in
        silence: the last speech packet before it)."""
        return self.relays[leg.codec].send_time_of(event.end_s - self.offset(leg))


def run_dtx_call(
    tmp: Path,
    legs: Sequence[Leg] = LEGS,
    settings: dict[str, Any] | None = None,
    *,
    idle_timeout_s: float = 3.0,
    jitter_ms: int = 60,
    reference: bool = True,
) -> CallResult:
    """Run the call (about ``DURATION_S`` + the warm-up + the idle timeouts)."""
    from emomon.services.pipeline import Pipeline
    from emomon.services.worker import FusionWorker

    base = {"console": {"enabled": False}, "speakers": {"mode": "channel"}}
    cfg = Settings.model_validate({**base, **(settings or {})})
    wav = write_wav(tmp / "call.wav", speech_with_gaps(SPEECH))
    port = free_port_pair()
    sdp = opus_sdp(tmp / "offer.sdp")
    sink = CaptureSink()

    async def main() -> tuple[RtpSource, dict[str, DtxRelay]]:
        rtp = RtpSource(
            "127.0.0.1",
            port,
            jitter_ms=jitter_ms,
            idle_timeout_s=idle_timeout_s,
            exit_when_idle_s=2.5,  # longer than the mid-call pause outlasts the idle timeout
            sdp_path=str(sdp),
        )
        pipeline = Pipeline(cfg, [sink], worker=FusionWorker(cfg.worker))
        sessions: list[tuple[str, Any]] = [("call", rtp)]
        if reference:
            sessions.append(("file", FileSource(wav)))
        ready = asyncio.Event()
        running = asyncio.create_task(pipeline.run(sessions, on_ready=ready.set))
        await ready.wait()  # warmed up and listening: now the phones call
        loop = asyncio.get_running_loop()
        relays: dict[str, DtxRelay] = {}
        transports, senders = [], []
        for leg in legs:
            relay = relays[leg.codec] = DtxRelay(
                ("127.0.0.1", port), CLOCK_HZ[leg.codec], SILENCES, cn=leg.cn_and_bye, pace_s=0.25
            )
            relay_port = free_port_pair()
            transports += await start_relay(loop, relay, relay_port)
            args = ffmpeg_rtp_args(
                relay_port, leg.codec, 0.0, DURATION_S, ssrc=leg.ssrc, wav=wav,
                send_bye=leg.cn_and_bye,
            )  # fmt: skip
            senders.append(run_ffmpeg(args, delay_s=leg.offset_s))
        await asyncio.gather(*senders)
        try:
            await running
        finally:
            pipeline.close()
            for t in transports:
                t.close()
        return rtp, relays

    rtp, relays = asyncio.run(asyncio.wait_for(main(), 240))
    return CallResult(
        events=[(e, t) for e, t in sink.got if e.session == "call"],
        relays=relays,
        rtp_stats=rtp.stats,
        legs=legs,
        reference=sorted((e for e, _ in sink.got if e.session == "file"), key=lambda e: e.start_s),
    )
