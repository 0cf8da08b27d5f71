"""Text-led fusion with a learned audio-reliability gate, and calibration (issue #14).

After CFN-ESA (MODEL.md §2), text is the primary modality and audio the secondary one. The
text expert (the utterance network read on the transcript alone, with the conversation
context) gives a distribution ``p_t``; the audio expert (:mod:`emomon.model.audio_expert`)
gives ``p_a``. Both are temperature-scaled (fitted on dev), then combined as a product of
experts in which audio has a weight ``α``:

    log p ∝ log p_t + α · log p_a,      α = α_max · sigmoid(w · φ + b)

``φ`` describes how far audio can be trusted for *this* utterance: the audio expert's own
confidence and entropy, the text's confidence and entropy, how much of the segment is voiced,
how strongly the words alone say "neutral" (neutral words are weak evidence about the
voice: "Kids are talking by the door" can be said in anger), its duration, and whether there
is a transcript at all (not its recording level: answers
must not depend on how loud the line is).
``w, b, α_max`` are fitted by likelihood on held-out data, with the text's weights constrained
so that a more confident text never gives audio *more* weight. Without a transcript ``p_t`` is
uniform: the answer is then the audio's, flattened by the gate where audio is unreliable.

Two rules sit on top, both in :class:`GateConfig` and both unit-tested:

* **text veto** — when the calibrated text confidence is at least ``text_veto``, audio may
  sharpen or soften the answer but never change its label: ``α`` is capped at the largest
  value that keeps the text's top class on top. Audio alone cannot overturn confident text.
* **no speech** — a segment with no transcript whose voiced share is below
  ``no_speech_voiced`` (or that is shorter than ``no_speech_min_s``) gets the outcome
  ``no_speech``: no emotion is claimed for noise.

Confidence is then what it says: :func:`expected_calibration_error` (15 bins) is reported
on MELD test and RAVDESS held-out actors in docs/RESULTS.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import check_fields
from .errors import CheckpointError, ConfigError

GATE_FILE = "gate.json"
#: the largest audio weight a fitted gate may give (α_max < ALPHA_LIMIT). Text is the primary
#: modality: audio's log-likelihood never counts more than the text's. The gate is fitted on
#: acted speech, where audio is far more reliable than on real calls; without this bound it
#: learns weights of 2.6–3 that the acted data justify and real conversations do not.
ALPHA_LIMIT = 1.0
#: φ, in order (see the module docstring)
GATE_FEATURES = (
    "audio_conf",
    "audio_entropy",
    "text_conf",
    "text_entropy",
    "text_neutral",
    "voiced",
    "log_duration",
    "has_text",
)


@dataclass(frozen=True)
class GateConfig:
    text_temperature: float = 1.0
    audio_temperature: float = 1.0
    alpha_max: float = 1.0
    weights: tuple[float, ...] = (0.0,) * len(GATE_FEATURES)
    bias: float = 0.0
    text_veto: float = 0.9
    no_speech_voiced: float = 0.2
    no_speech_min_s: float = 0.3
    min_confidence: float = 0.0  # below: outcome "uncertain" (the worker's setting overrides)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.weights) != len(GATE_FEATURES):
            raise ConfigError(
                f"gate weights need {len(GATE_FEATURES)} values, got {len(self.weights)}"
            )
        if self.text_temperature <= 0 or self.audio_temperature <= 0:
            raise ConfigError("gate temperatures must be > 0")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be in 0..1, got {self.min_confidence}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateConfig:
        check_fields(cls, d, "gate")
        d = dict(d)
        if "weights" in d:
            d["weights"] = tuple(float(v) for v in d["weights"])
        return cls(**d)


def save_gate(cfg: GateConfig, folder: str | Path) -> None:
    Path(folder, GATE_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))


def load_gate(folder: str | Path) -> GateConfig | None:
    p = Path(folder, GATE_FILE)
    if not p.is_file():
        return None
    try:
        return GateConfig.from_dict(json.loads(p.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot read {p}: {e}") from e


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1) / math.log(logp.shape[-1])


def gate_features(
    logp_t: torch.Tensor, has_text: torch.Tensor, logp_a: torch.Tensor, meta: torch.Tensor
) -> torch.Tensor:
    """φ (B, 8) from log-probabilities, the text flag and meta (level dBFS, duration s, voiced).
    The recording level is deliberately not a feature: answers must not depend on it."""
    ht = has_text.float()
    return torch.stack(
        [
            logp_a.exp().max(-1).values,
            _entropy(logp_a),
            logp_t.exp().max(-1).values * ht,
            _entropy(logp_t) * ht + (1 - ht),
            logp_t[:, 0].exp() * ht,  # words with no emotion in them ("neutral", class 0)
            meta[:, 2],
            torch.log(meta[:, 1].clamp(min=0.05)),
            ht,
        ],
        -1,
    )


def veto_cap(logp_t: torch.Tensor, logp_a: torch.Tensor) -> torch.Tensor:
    """The largest α that keeps argmax(log p_t + α log p_a) = argmax(p_t), per row (inf: any)."""
    top = logp_t.argmax(-1, keepdim=True)
    margin = logp_t.gather(-1, top) - logp_t  # ≥ 0
    push = logp_a - logp_a.gather(-1, top)  # > 0 where audio prefers another class
    cap = torch.where(push > 0, margin / push.clamp(min=1e-9), torch.full_like(margin, math.inf))
    return cap.min(-1).values * 0.999


def fuse(
    text_logits: torch.Tensor,
    has_text: torch.Tensor,
    audio_logits: torch.Tensor | None,
    has_audio: torch.Tensor,
    meta: torch.Tensor,
    cfg: GateConfig,
    veto: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused log-probabilities (B, C) and the audio weight α (B,) actually used."""
    n = text_logits.shape[-1]
    uniform = torch.full_like(text_logits, -math.log(n))
    logp_t = torch.where(
        has_text[:, None], torch.log_softmax(text_logits / cfg.text_temperature, -1), uniform
    )
    if audio_logits is None:
        return logp_t, torch.zeros(text_logits.shape[0])
    logp_a = torch.log_softmax(audio_logits / cfg.audio_temperature, -1)
    phi = gate_features(logp_t, has_text, logp_a, meta)
    w = torch.tensor(cfg.weights, dtype=phi.dtype)
    alpha = cfg.alpha_max * torch.sigmoid(phi @ w + cfg.bias) * has_audio.float()
    if veto:
        confident = has_text & (logp_t.exp().max(-1).values >= cfg.text_veto)
        alpha = torch.where(confident, torch.minimum(alpha, veto_cap(logp_t, logp_a)), alpha)
    fused = torch.log_softmax(logp_t + alpha[:, None] * logp_a, -1)
    return fused, alpha


# ----------------------------------------------------------------------------- fitting
def fit_temperature(logits: np.ndarray, y: np.ndarray, steps: int = 200) -> float:
    """The temperature that minimises the NLL of ``softmax(logits / T)`` (LBFGS on log T)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def fit_gate(
    text_logits: np.ndarray,
    has_text: np.ndarray,
    audio_logits: np.ndarray,
    meta: np.ndarray,
    y: np.ndarray,
    base: GateConfig,
    steps: int = 300,
    l2: float = 1e-3,
) -> GateConfig:
    """Fit ``w, b, α_max`` by the NLL of the fused answer (temperatures stay as in ``base``)."""
    tl = torch.as_tensor(text_logits, dtype=torch.float32)
    ht = torch.as_tensor(has_text, dtype=torch.bool)
    al = torch.as_tensor(audio_logits, dtype=torch.float32)
    mt = torch.as_tensor(meta, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    logp_t = torch.where(
        ht[:, None],
        torch.log_softmax(tl / base.text_temperature, -1),
        torch.full_like(tl, -math.log(tl.shape[-1])),
    )
    logp_a = torch.log_softmax(al / base.audio_temperature, -1)
    phi = gate_features(logp_t, ht, logp_a, mt).detach()
    mu, sd = phi.mean(0), phi.std(0) + 1e-3  # fit in standardised φ, fold back afterwards
    zs = (phi - mu) / sd
    w = torch.zeros(phi.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    raw_amax = torch.zeros(1, requires_grad=True)  # α_max = A · sigmoid(raw): in (0, A)
    opt = torch.optim.Adam([w, b, raw_amax], lr=0.05)
    # text-led by construction: a more confident (lower-entropy) text never gives audio more
    # weight, so those two weights are kept ≤ 0 and ≥ 0 (projected after every step)
    i_conf, i_ent = GATE_FEATURES.index("text_conf"), GATE_FEATURES.index("text_entropy")
    for _ in range(steps):
        alpha = ALPHA_LIMIT * torch.sigmoid(raw_amax) * torch.sigmoid(zs @ w + b)
        fused = torch.log_softmax(logp_t + alpha[:, None] * logp_a, -1)
        loss = torch.nn.functional.nll_loss(fused, yt) + l2 * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w[i_conf].clamp_(max=0.0)
            w[i_ent].clamp_(min=0.0)
    w_raw = (w / sd).detach()
    b_raw = float(b.detach() - (w.detach() * mu / sd).sum())
    return GateConfig(
        **{
            **base.to_dict(),
            "alpha_max": float(ALPHA_LIMIT * torch.sigmoid(raw_amax.detach())),
            "weights": tuple(float(v) for v in w_raw),
            "bias": b_raw,
        }
    )


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al. 2017)."""
    probs = np.asarray(probs)
    conf = probs.max(1)
    correct = (probs.argmax(1) == np.asarray(y)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)
