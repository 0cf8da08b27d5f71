"""Text-led fusion (model.gate): the veto, the no-text path, fitting and calibration files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emomon.model.errors import ConfigError
from emomon.model.gate import (
    GATE_FEATURES,
    GateConfig,
    expected_calibration_error,
    fit_gate,
    fit_temperature,
    fuse,
    load_gate,
    save_gate,
    veto_cap,
)

C = 7


def _logits(top: int, strength: float) -> torch.Tensor:
    z = torch.zeros(C)
    z[top] = strength
    return z


def _meta(n: int = 1, voiced: float = 0.8) -> torch.Tensor:
    return torch.tensor([[-25.0, 2.5, voiced]] * n)


def open_gate(**kw: object) -> GateConfig:
    """A gate that always gives audio a large weight (bias +10): only the veto can stop it."""
    return GateConfig(alpha_max=2.0, bias=10.0, **kw)  # type: ignore[arg-type]


def test_confident_text_keeps_its_label_against_contradicting_audio() -> None:
    text = _logits(0, 4.0)[None]  # neutral, p ≈ 0.9
    audio = _logits(6, 12.0)[None]  # fear, p ≈ 1.0
    cfg = open_gate(text_veto=0.85)
    fused, alpha = fuse(text, torch.tensor([True]), audio, torch.tensor([True]), _meta(), cfg)
    assert torch.softmax(text, -1).max() >= 0.85
    assert int(fused.argmax()) == 0  # the text's answer
    assert 0 < float(alpha[0]) < 2.0  # audio still counted, capped below the flip
    # without the veto the same audio overturns it: the rule is what keeps the text answer
    fused_nv, _ = fuse(
        text, torch.tensor([True]), audio, torch.tensor([True]), _meta(), cfg, veto=False
    )
    assert int(fused_nv.argmax()) == 6


def test_unsure_text_can_be_changed_by_reliable_audio() -> None:
    text = torch.zeros(1, C)
    text[0, 0], text[0, 3] = 0.5, 0.3  # neutral, barely
    audio = _logits(3, 6.0)[None]  # anger
    fused, _ = fuse(text, torch.tensor([True]), audio, torch.tensor([True]), _meta(), open_gate())
    assert int(fused.argmax()) == 3


def test_veto_cap_is_the_largest_weight_that_keeps_the_top_class() -> None:
    logp_t = torch.log_softmax(torch.randn(50, C) * 2, -1)
    logp_a = torch.log_softmax(torch.randn(50, C) * 3, -1)
    cap = veto_cap(logp_t, logp_a)
    for i in range(50):
        a = float(cap[i])
        if math.isinf(a):
            continue
        assert int((logp_t[i] + a * logp_a[i]).argmax()) == int(logp_t[i].argmax())
        assert int((logp_t[i] + 1.01 * a / 0.999 * logp_a[i]).argmax()) != int(logp_t[i].argmax())


def test_no_text_and_unreliable_audio_is_flat() -> None:
    """Without a transcript the base is uniform; a gate that distrusts audio keeps it flat."""
    closed = GateConfig(bias=-10.0)
    audio = _logits(3, 8.0)[None]
    fused, alpha = fuse(
        torch.zeros(1, C), torch.tensor([False]), audio, torch.tensor([True]), _meta(), closed
    )
    assert float(alpha[0]) < 1e-3
    assert float(fused.exp().max()) < 0.2


def test_missing_audio_gives_the_calibrated_text_answer() -> None:
    cfg = GateConfig(text_temperature=2.0)
    text = _logits(1, 3.0)[None]
    fused, alpha = fuse(
        text,
        torch.tensor([True]),
        torch.zeros(1, C),
        torch.tensor([False]),
        _meta(),
        open_gate(text_temperature=2.0),
    )
    assert float(alpha[0]) == 0.0
    torch.testing.assert_close(fused.exp(), torch.softmax(text / cfg.text_temperature, -1))


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, C))
    y = np.array([rng.choice(C, p=np.exp(z) / np.exp(z).sum()) for z in true_logits])
    t = fit_temperature(true_logits * 3.0, y)  # the model is 3x overconfident
    assert t == pytest.approx(3.0, rel=0.1)


def test_fitted_gate_learns_to_trust_audio_that_is_right() -> None:
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, C, n)
    text = rng.normal(0, 0.3, (n, C)).astype(np.float32)  # uninformative text
    audio = rng.normal(0, 1, (n, C)).astype(np.float32)
    audio[np.arange(n), y] += 3.0  # informative audio
    meta = np.tile([[-25.0, 2.0, 0.8]], (n, 1)).astype(np.float32)
    gate = fit_gate(text, np.ones(n, bool), audio, meta, y, GateConfig())
    fused, alpha = fuse(
        torch.from_numpy(text),
        torch.ones(n, dtype=torch.bool),
        torch.from_numpy(audio),
        torch.ones(n, dtype=torch.bool),
        torch.from_numpy(meta),
        gate,
    )
    assert float(alpha.mean()) > 0.5
    assert (fused.argmax(1).numpy() == y).mean() > 0.8


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model() -> None:
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(C), 20000)
    y = np.array([rng.choice(C, p=row) for row in p])
    assert expected_calibration_error(p, y) < 0.02
    sharp = np.zeros_like(p)
    sharp[np.arange(len(p)), p.argmax(1)] = 1.0
    assert expected_calibration_error(sharp, y) > 0.3


def test_calibration_parameters_round_trip_in_the_checkpoint(tmp_path: Path) -> None:
    cfg = GateConfig(
        text_temperature=1.37,
        audio_temperature=2.11,
        alpha_max=0.8,
        weights=tuple(float(i) / 10 for i in range(len(GATE_FEATURES))),
        bias=-0.25,
        text_veto=0.85,
        min_confidence=0.4,
        fitted_on={"text_temperature": "MELD dev"},
    )
    save_gate(cfg, tmp_path)
    assert load_gate(tmp_path) == cfg
    assert load_gate(tmp_path / "nothing-here") is None


def test_bad_gate_values_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="weights"):
        GateConfig(weights=(1.0,))
    with pytest.raises(ConfigError, match="min_confidence"):
        GateConfig(min_confidence=1.5)
