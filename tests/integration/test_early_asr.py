"""Early transcription (vad.early_asr_ms): on a channel with one speaker the ASR starts at the
first 150 ms of a pause, while the hang-over runs. Utterances that end there get exactly the
transcript they would have got without it (same audio), and sooner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from emomon.services.settings import Settings
from tests.conftest import CALL_WAV
from tests.integration.test_language_noise import espeak

SENTENCES = [
    "Good morning, I am calling about my order from last week.",
    "It still has not arrived.",
    "Could you please check it for me?",
    "Thank you very much, that is all.",
]


def _run(path: Path, early_ms: int, **sections: dict[str, Any]) -> Any:
    """The pipeline over ``path`` with ``vad.early_asr_ms`` = ``early_ms``; by default one
    speaker per channel, English, real-time pace (``sections`` replace whole sections)."""
    from emomon.services.pipeline import Pipeline, build_source
    from emomon.services.worker import FusionWorker

    config: dict[str, Any] = {
        "console": {"enabled": False},
        "speakers": {"mode": "channel"},
        "asr": {"language": "en"},
        "source": {"realtime": True},
        "vad": {"early_asr_ms": early_ms},
    }
    settings = Settings.model_validate({**config, **sections})

    async def main() -> Any:
        pipeline = Pipeline(settings, [], worker=FusionWorker(settings.worker))
        try:
            return await pipeline.run([("call", build_source(str(path), settings))])
        finally:
            pipeline.close()

    return asyncio.run(main())


def test_early_transcripts_are_the_same_and_come_sooner(tmp_path: Path) -> None:
    wav = espeak(SENTENCES, "en-us", tmp_path / "en.wav")
    off, on = _run(wav, 0), _run(wav, 150)
    assert off.early_asr == 0
    texts = [[(e.start_s, e.end_s, e.text) for e in s.events_list] for s in (off, on)]
    assert texts[0] == texts[1] and len(texts[0]) == len(SENTENCES)
    # each sentence ends in a 0.8 s pause with an idle ASR: all of them early
    assert on.early_asr_used == len(SENTENCES) and on.early_asr == len(SENTENCES)
    asr_ms = {
        name: sorted(e.stage_ms["asr"] for e in s.events_list)
        for name, s in (("off", off), ("on", on))
    }
    # the transcription ran while the last 150 ms of the hang-over did
    assert asr_ms["on"][len(SENTENCES) // 2] < asr_ms["off"][len(SENTENCES) // 2], asr_ms


def test_early_transcripts_on_a_channel_with_two_voices() -> None:
    """A mono call (speakers clustered): the draft's speaker is the one the turn detector's
    windows name so far; a segment that closes at the pause with that label keeps the early
    transcript, and every event is the same as without early transcription."""

    def run(early_ms: int) -> Any:
        return _run(
            CALL_WAV,
            early_ms,
            speakers={"mode": "cluster", "num_speakers": 2},
            # greedy, one at a time: a fast replay's texts must not depend on which utterances
            # happen to meet in the ASR (the beam adapts to load)
            asr={"language": "en", "beam_size": 1, "batch_max": 1},
            source={"realtime": False},
        )

    off, on = run(0), run(150)
    assert off.early_asr == 0
    seen = [[(e.start_s, e.end_s, e.speaker, e.text) for e in s.events_list] for s in (off, on)]
    assert seen[0] == seen[1] and len(seen[0]) >= 8
    assert on.early_asr_used >= 1 and on.early_asr >= on.early_asr_used
