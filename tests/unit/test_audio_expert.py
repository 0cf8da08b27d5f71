"""The audio expert's pieces: level normalisation, augmentation, statistics, speaker references,
the checkpoint files, and the G.711 round trip shared with the RTP source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emomon.model.audio import WhisperWindow, active_level_dbfs, normalize_level
from emomon.model.audio_expert import (
    STATS_DIM,
    AudioExpert,
    AudioExpertConfig,
    ExpertData,
    causal_references,
    clip_stats,
    load_expert,
    save_expert,
    speaker_reference,
    train_expert,
    voiced_ratio,
)
from emomon.model.augment import augment
from emomon.model.errors import AudioError
from emomon.model.g711 import roundtrip


def tone(seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amp * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )


def test_level_normalisation_removes_a_digital_gain() -> None:
    x = tone()
    for gain_db in (-20.0, -6.0, 0.0, 6.0):
        y = normalize_level(x * np.float32(10 ** (gain_db / 20)), -23.0)
        assert active_level_dbfs(y) == pytest.approx(-23.0, abs=0.01)
        np.testing.assert_allclose(y, normalize_level(x, -23.0), atol=1e-5)


def test_silence_stays_silent_and_gain_is_bounded() -> None:
    assert not normalize_level(np.zeros(16000, np.float32)).any()
    faint = tone(amp=1e-5)
    assert active_level_dbfs(normalize_level(faint)) < -23.0  # at most +45 dB


def test_window_spec_carries_the_level() -> None:
    w = WhisperWindow.parse("10+8/-23")
    assert (w.min_s, w.margin_s, w.level_dbfs, w.spec) == (10.0, 8.0, -23.0, "10+8/-23")
    assert WhisperWindow.parse("10+8").level_dbfs is None
    assert WhisperWindow.parse("full/-20").spec == "full/-20"
    with pytest.raises(AudioError, match="LEVEL"):
        WhisperWindow.parse("10+8/loud")
    with pytest.raises(AudioError, match="dBFS"):
        WhisperWindow.parse("10+8/-90")


def test_g711_round_trip_is_close_for_both_laws() -> None:
    x = tone(amp=0.5)
    for law in ("ulaw", "alaw"):
        y = roundtrip(x, law)
        snr = 10 * np.log10((x**2).mean() / ((x - y) ** 2).mean())
        assert snr > 30, (law, snr)
    with pytest.raises(ValueError):
        roundtrip(x, "g729")


def test_augmentation_is_seeded_and_changes_the_clip() -> None:
    x = tone(2.0)
    a = augment(x, np.random.default_rng(5))
    b = augment(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0 and a.dtype == np.float32
    outs = [augment(x, np.random.default_rng(s)) for s in range(8)]
    assert any(o.size != x.size for o in outs)  # speed perturbation happened
    assert any(o.size == x.size and not np.allclose(o, x) for o in outs)


def test_clip_stats_and_voiced_ratio() -> None:
    f = np.random.default_rng(0).normal(size=(40, 384)).astype(np.float32)
    s = clip_stats(f)
    assert s.shape == (STATS_DIM,)
    np.testing.assert_allclose(s[:384], f.mean(0), atol=1e-6)
    with pytest.raises(ValueError):
        clip_stats(np.zeros((0, 384)))
    assert voiced_ratio(np.zeros(16000, np.float32)) == 0.0


def _toy_data(n_spk: int = 6, per: int = 40, seed: int = 0) -> ExpertData:
    """Speakers with their own offset; the class shows as a shift from the speaker's mean."""
    rng = np.random.default_rng(seed)
    xs, ys, spk = [], [], []
    for s in range(n_spk):
        off = rng.normal(0, 3, STATS_DIM)
        for _ in range(per):
            y = int(rng.integers(0, 7))
            v = off + rng.normal(0, 1, STATS_DIM)
            v[y] += 3.0
            xs.append(np.concatenate([v, [-25.0, 2.0, 0.8]]))
            ys.append(y)
            spk.append(f"toy/s{s}")
    n = len(ys)
    return ExpertData(
        np.array(xs, np.float32),
        np.array(ys),
        np.array(spk),
        np.array([f"c{i}" for i in range(n)]),
        np.zeros(n, int),
    )


def test_speaker_relative_input_helps_when_speakers_differ() -> None:
    train, test = _toy_data(seed=0), _toy_data(seed=1)
    from emomon.model.audio_expert import expert_logits

    plain, _ = train_expert(train, AudioExpertConfig(speaker_norm=False), epochs=15)
    rel, _ = train_expert(train, AudioExpertConfig(speaker_norm=True), epochs=15)
    acc = lambda e, mode: (expert_logits(e, test, mode).argmax(1) == test.y).mean()  # noqa: E731
    assert acc(rel, "speaker") > acc(plain, "utterance") + 0.05


def test_causal_references_use_only_earlier_clips() -> None:
    data = _toy_data(n_spk=2, per=10)
    expert = AudioExpert(AudioExpertConfig())
    ref = causal_references(data, expert, seed=3)
    assert (np.abs(ref).sum(1) == 0).sum() == 2  # each speaker's first clip has none
    z = speaker_reference([data.x[0], data.x[1]], expert)
    assert z.shape == (STATS_DIM,) and np.any(z)
    assert not speaker_reference([], expert).any()


def test_expert_files_round_trip(tmp_path: Path) -> None:
    e = AudioExpert(AudioExpertConfig(hidden=32))
    with torch.no_grad():
        e.mu.fill_(0.5)
    save_expert(e, tmp_path, {"note": "x"})
    back = load_expert(tmp_path)
    assert back is not None and back.cfg == e.cfg
    x = torch.randn(3, STATS_DIM)
    torch.testing.assert_close(back(x), e.eval()(x))
    assert load_expert(tmp_path / "none") is None
