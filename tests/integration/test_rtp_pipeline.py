"""RTP through the whole pipeline (VAD → Whisper → emotion → events), compared in the same test
with replaying the same audio from files.

Three ffmpeg senders to one RtpSource: Diane's excerpt (PCMU), Sheila's excerpt (PCMA), and
Diane's excerpt again through a lossy relay (5 % loss, duplicates, reordering). The two excerpts
are also replayed from 16 kHz WAV files in the same pipeline run. The RTP transcripts must carry
the file replay's words (allowing for G.711's 8 kHz band, and for the relay's holes), the
utterances must fall at the same stream times, and every RTP event must name its SSRC's speaker.
"""

from __future__ import annotations

import asyncio
import re
import wave
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rtp_helpers import (
    FFMPEG,
    SR,
    LossyRelay,
    ffmpeg_rtp_args,
    free_port_pair,
    load_call,
    run_ffmpeg,
)

from emomon.services.settings import Settings
from emomon.streamer.sources.file import FileSource
from emomon.streamer.sources.rtp import RtpSource

pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (apt-get install ffmpeg)"),
]

EXCERPTS = {"diane": (6.0, 8.0), "sheila": (14.0, 8.0)}  # (start_s, dur_s) of the call
SSRC = {"diane": 0xD1A7E, "sheila": 0x5E11A, "relayed": 0x7E1A1}
NAMES = {f"0x{v:x}": k.capitalize() for k, v in SSRC.items()}


def _worker(settings: Settings) -> Any:
    from emomon.services.worker import FusionWorker

    return FusionWorker(settings.worker)  # the real shipped checkpoint


def write_excerpt(path: Path, start_s: float, dur_s: float) -> Path:
    pcm = load_call()[int(start_s * SR) : int((start_s + dur_s) * SR)]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return path


def words(texts: Sequence[str]) -> Counter[str]:
    return Counter(w for t in texts for w in re.findall(r"[a-z']+", t.lower()))


def recall(got: Counter[str], want: Counter[str]) -> float:
    return sum((got & want).values()) / max(1, sum(want.values()))


def test_rtp_transcripts_and_events_match_the_file_replay(tmp_path: Path) -> None:
    from emomon.services.pipeline import Pipeline

    settings = Settings.model_validate(
        {
            "console": {"enabled": False},
            "speakers": {"mode": "channel"},
            "source": {"rtp_jitter_ms": 200},
        }
    )
    port, relay_port = free_port_pair(), free_port_pair()
    files = {k: write_excerpt(tmp_path / f"{k}.wav", *v) for k, v in EXCERPTS.items()}

    async def main() -> tuple[list[Any], RtpSource, LossyRelay]:
        s = settings.source
        rtp = RtpSource(
            "127.0.0.1",
            port,
            jitter_ms=s.rtp_jitter_ms,
            idle_timeout_s=3.0,
            exit_when_idle_s=1.0,
            ssrc_names=NAMES,
        )
        await rtp.start()
        # Models load before the calls come in, as in `emomon run` (RtpSource also survives a
        # loop stalled by loading: a unit test covers that).
        pipeline = Pipeline(settings, [], worker=_worker(settings))
        loop = asyncio.get_running_loop()
        relay = LossyRelay(("127.0.0.1", port), seed=11)
        relay_t = [
            (await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", p)))[0]
            for p in (relay_port, relay_port + 1)
        ]
        senders = [
            run_ffmpeg(ffmpeg_rtp_args(port, "pcmu", *EXCERPTS["diane"], ssrc=SSRC["diane"])),
            run_ffmpeg(ffmpeg_rtp_args(port, "pcma", *EXCERPTS["sheila"], ssrc=SSRC["sheila"])),
            run_ffmpeg(
                ffmpeg_rtp_args(relay_port, "pcmu", *EXCERPTS["diane"], ssrc=SSRC["relayed"])
            ),
        ]
        sending = asyncio.gather(*senders)
        # The receiver buffers from start(); begin the pipeline once all three streams exist, so a
        # slow ffmpeg start cannot trip the idle exit.
        for _ in range(200):
            if rtp.stats["streams_started"] == 3:
                break
            await asyncio.sleep(0.05)
        try:
            stats = await pipeline.run(
                [
                    ("rtp", rtp),
                    ("file-diane", FileSource(files["diane"])),
                    ("file-sheila", FileSource(files["sheila"])),
                ]
            )
        finally:
            pipeline.close()
        await sending
        for t in relay_t:
            t.close()
        return stats.events_list, rtp, relay

    events, rtp, relay = asyncio.run(asyncio.wait_for(main(), 200))

    def of(session: str, speaker: str | None = None) -> list[Any]:
        return sorted(
            (
                e
                for e in events
                if e.session == session and (speaker is None or e.speaker == speaker)
            ),
            key=lambda e: e.start_s,
        )

    rtp_events = of("rtp")
    assert {e.speaker for e in rtp_events} == {"Diane", "Sheila", "Relayed"}
    assert {e.channel for e in rtp_events} == {f"ssrc-{v:08x}" for v in SSRC.values()}
    lost, dup = relay.expected_counts()
    per = rtp.stats_by_ssrc()
    assert (
        per[f"ssrc-{SSRC['relayed']:08x}"]["lost"],
        per[f"ssrc-{SSRC['relayed']:08x}"]["duplicate"],
    ) == (lost, dup)
    assert (
        per[f"ssrc-{SSRC['diane']:08x}"]["lost"] == per[f"ssrc-{SSRC['sheila']:08x}"]["lost"] == 0
    )

    report = []
    for session, speaker, min_recall in (
        ("file-diane", "Diane", 0.7),
        ("file-sheila", "Sheila", 0.7),
        ("file-diane", "Relayed", 0.5),  # 5 % of 20 ms packets are silence
    ):
        ref, got = of(session), of("rtp", speaker)
        assert ref and got, (speaker, len(ref), len(got))
        r = recall(words([e.text or "" for e in got]), words([e.text or "" for e in ref]))
        # Utterances at the same stream time: each file utterance has an RTP one starting near it.
        pairs = [(f, min(got, key=lambda g, f=f: abs(g.start_s - f.start_s))) for f in ref]
        near = sum(abs(g.start_s - f.start_s) < 0.5 for f, g in pairs) / len(ref)
        # Events: the same emotion label for the same utterance (G.711 audio is band-limited, so
        # the audio branch of the model may disagree now and then).
        same_label = sum(f.label == g.label for f, g in pairs) / len(ref)
        report.append(
            f"{speaker}: {len(got)} RTP vs {len(ref)} file utterances, word recall {r:.2f}, "
            f"start-aligned {near:.2f}, same label {same_label:.2f} ({got[0].model_id}); "
            f"RTP: {' | '.join(e.text or '' for e in got)!r}; file: {' | '.join(e.text or '' for e in ref)!r}"
        )
        assert r >= min_recall, report[-1]
        assert near >= 0.6, report[-1]
        assert speaker == "Relayed" or same_label >= 0.5, report[-1]
        assert abs(len(got) - len(ref)) <= max(2, len(ref) // 2), report[-1]
    print("\n".join(report))
