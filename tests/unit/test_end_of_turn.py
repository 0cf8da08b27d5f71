"""The end-of-turn model (smart-turn v3.2 from the pipecat-ai wheel) and the segmenter's early
close: file found in the wheel, one-line error without it, complete vs incomplete speech made
with espeak-ng, and the hook closing a finished sentence before the hang-over runs out."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator
from functools import cache

import numpy as np
import pytest

from emomon.streamer import end_of_turn as eot
from emomon.streamer.config import SegmenterConfig
from emomon.streamer.end_of_turn import EndOfTurn, EndOfTurnModelError, model_path
from emomon.streamer.segmenter import Segmenter
from emomon.streamer.sources.base import AudioChunk

SR = 16_000
COMPLETE = ["Thank you very much for your help.", "Okay, thanks for your help."]
INCOMPLETE = ["Thank you very much for your help because", "So what I was trying to say is that"]

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (scripts/install.sh --dev)"
)


@cache
def say(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng (en-us), 16 kHz float, leading/trailing silence cut."""
    from scipy.signal import resample_poly

    raw = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(raw)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    x = resample_poly(x, SR, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return x[max(0, loud[0] - SR // 10) : loud[-1] + 1]


@cache
def model() -> eot.EndOfTurnModel:
    return eot.EndOfTurnModel()


def test_model_file_is_found_in_the_wheel() -> None:
    path = model_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx" and path.stat().st_size > 5_000_000
    assert "pipecat" in path.parts


def test_missing_wheel_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(eot.importlib.metadata, "distribution", absent)
    with pytest.raises(EndOfTurnModelError) as e:
        EndOfTurn(SegmenterConfig(end_of_turn_pause_ms=120), model=None)
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps pipecat-ai" in msg
    assert "vad.end_of_turn_pause_ms=0" in msg


def test_missing_file_in_the_wheel_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eot, "MODEL_FILE", "pipecat/no/such/model.onnx")
    with pytest.raises(EndOfTurnModelError, match="is not in the installed 'pipecat-ai' wheel"):
        model_path()


def test_turned_off_needs_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eot, "model_path", lambda: pytest.fail("model loaded while off"))
    assert EndOfTurn(SegmenterConfig(end_of_turn_pause_ms=0)).model is None


def test_features_are_the_last_8_s_left_padded() -> None:
    rng = np.random.default_rng(0)
    short = rng.standard_normal(SR).astype(np.float32) * 0.1
    f = eot.turn_features(short)
    assert f.shape == (80, 800) and f.dtype == np.float32
    # 7 s of padding (constant in time), then the audio
    assert np.ptp(f[:, :650], axis=1).max() < 1e-3 < np.ptp(f[:, -90:], axis=1).min()
    long = rng.standard_normal(10 * SR).astype(np.float32) * 0.1
    np.testing.assert_allclose(eot.turn_features(long), eot.turn_features(long[-8 * SR :]))


@needs_espeak
@needs_espeak
def test_complete_sentences_score_above_incomplete_ones() -> None:
    pause = np.zeros(int(0.12 * SR), np.float32)
    done = [model().complete_probability(np.concatenate([say(t), pause])) for t in COMPLETE]
    cut = [model().complete_probability(np.concatenate([say(t), pause])) for t in INCOMPLETE]
    assert min(done) >= 0.8, done
    assert max(cut) <= 0.2, cut


async def _chunks(x: np.ndarray) -> AsyncIterator[AudioChunk]:
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    step = SR // 50
    for i in range(0, pcm.size, step):
        yield AudioChunk("0", i / SR, pcm[i : i + step], final=i + step >= pcm.size)


def _closed_after(text: str, pause_ms: int) -> float:
    """Stream seconds from the end of ``text`` to the close of its segment."""
    cfg = SegmenterConfig(aggressiveness=2, end_of_turn_pause_ms=pause_ms)
    hook = EndOfTurn(cfg, model=model() if pause_ms else None)
    seg = Segmenter(cfg)
    speech = np.concatenate([np.zeros(SR // 2, np.float32), say(text), np.zeros(SR, np.float32)])

    async def run() -> list:
        out = []
        async for chunk in _chunks(speech):
            out += seg.feed(chunk)
            out += await hook.close_early(seg)
        return out

    (only,) = asyncio.run(run())
    return only.hangover_s


@needs_espeak
def test_a_finished_sentence_closes_at_the_first_pause() -> None:
    assert _closed_after(COMPLETE[0], 0) >= 0.29  # the VAD alone waits the whole hang-over
    assert _closed_after(COMPLETE[0], 120) <= 0.15


@needs_espeak
def test_an_unfinished_sentence_waits_for_the_hang_over() -> None:
    assert _closed_after(INCOMPLETE[0], 120) >= 0.29


@needs_espeak
def test_the_speech_stage_counts_questions_and_early_closes() -> None:
    from emomon.streamer.config import SpeakerConfig
    from emomon.streamer.stages import SpeakerStage, StreamStats, speech

    cfg = SegmenterConfig(aggressiveness=2, end_of_turn_pause_ms=120)
    pause = np.zeros(SR, np.float32)
    audio = np.concatenate([pause, say(COMPLETE[0]), pause, say(INCOMPLETE[0]), pause])
    stats = StreamStats()
    stage = SpeakerStage(SpeakerConfig(mode="channel"), source=None)  # type: ignore[arg-type]

    async def run() -> list:
        hook = EndOfTurn(cfg, model=model())
        return [s async for s, *_ in speech(_chunks(audio), Segmenter(cfg), stage, stats, hook)]

    segs = asyncio.run(run())
    assert len(segs) == 2 and stats.segments == 2
    assert stats.turn_questions == 2 and stats.early_closes == 1
    assert segs[0].hangover_s <= 0.15 and segs[1].hangover_s >= 0.29


@needs_espeak
def test_the_decision_times_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eot, "DECISION_TIMES", 1)
    cfg = SegmenterConfig(aggressiveness=2, end_of_turn_pause_ms=120)
    hook = EndOfTurn(cfg, model=model())
    seg = Segmenter(cfg)
    pause = np.zeros(SR, np.float32)
    audio = np.concatenate([pause, say(COMPLETE[0]), pause, say(INCOMPLETE[0]), pause])

    async def run() -> None:
        async for chunk in _chunks(audio):
            seg.feed(chunk)
            await hook.close_early(seg)

    asyncio.run(run())
    assert hook.asked == 2 and len(hook.model_s) == 1
