"""The audio expert: emotion from *how* something is said, built to generalise (issue #14).

It reads what the ASR pass computes anyway — the frozen Whisper encoder frames — but of
**level-normalised** audio (recipe ``10+8/-23``: the utterance is brought to -23 dBFS before
the log-mel features), summarised as the mean ⊕ standard deviation of the frames (768 values,
:func:`clip_stats`). A small MLP maps them to the 7 classes. It is trained on clean and
augmented copies (:mod:`emomon.model.augment`: gain, telephone channel, noise, reverberation,
speed) so that recording level, channel and studio stop being cues.

**Speaker-relative input.** Emotion shows as a change from how a person usually sounds. In a
live session the worker has every speaker's earlier utterances (their turn memories carry
these statistics), so the expert may read its input *relative to the speaker*: the
standardised statistics minus a shrunk running mean of that speaker's earlier ones
(``ref = n / (n + shrink) · mean``, so one earlier turn moves it a little and many move it
fully). An isolated clip, or the first turn of a speaker, has no reference (zeros: the
utterance read on its own). ``speaker_norm`` in :class:`AudioExpertConfig` says whether the
expert was trained to use references; training then shows it a random number of earlier clips
of the same speaker (0–16) for each example, as a session would.

No transformers, no asyncio: the expert is a few hundred kB and runs in well under a
millisecond per utterance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .audio import SAMPLE_RATE_HZ, WhisperWindow, active_level_dbfs, encode_whisper
from .config import check_fields
from .datasets import MELD_LABELS
from .errors import CheckpointError

EXPERT_WEIGHTS = "audio_expert.safetensors"
EXPERT_CONFIG = "audio_expert.json"
#: The Whisper-frame recipe the shipped expert reads: ``10+8`` window, -23 dBFS.
EXPERT_RECIPE = "10+8/-23"
STATS_DIM = 768
#: side information per clip next to its statistics (for the fusion gate)
META = ("level_dbfs", "duration_s", "voiced")


def clip_stats(frames: np.ndarray) -> np.ndarray:
    """(T, D) Whisper frames → mean ⊕ std over time, (2D,) float32."""
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"frames must be (T>0, D), got {f.shape}")
    return np.concatenate([f.mean(0), f.std(0)]).astype(np.float32)


def voiced_ratio(audio: np.ndarray, aggressiveness: int = 2) -> float:
    """Share of 30 ms frames webrtcvad calls speech (0 for audio shorter than one frame)."""
    import webrtcvad

    x = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1, 1)
    pcm = (x * 32767).astype(np.int16)
    f = SAMPLE_RATE_HZ * 30 // 1000
    n = pcm.size // f
    if n == 0:
        return 0.0
    vad = webrtcvad.Vad(aggressiveness)
    return (
        sum(vad.is_speech(pcm[i * f : (i + 1) * f].tobytes(), SAMPLE_RATE_HZ) for i in range(n)) / n
    )


def clip_meta(audio: np.ndarray) -> np.ndarray:
    """(level dBFS before normalisation, duration s, voiced share) of one clip."""
    lvl = active_level_dbfs(audio)
    return np.array(
        [max(-100.0, lvl), audio.size / SAMPLE_RATE_HZ, voiced_ratio(audio)], dtype=np.float32
    )


def stats_row(whisper_model: Any, audio: np.ndarray, recipe: str = EXPERT_RECIPE) -> np.ndarray:
    """Statistics ⊕ meta of one clip, (771,) float32, computed as the live path does."""
    frames = encode_whisper(whisper_model, audio, WhisperWindow.parse(recipe))[2]
    return np.concatenate([clip_stats(frames), clip_meta(audio)])


@dataclass(frozen=True)
class AudioExpertConfig:
    labels: tuple[str, ...] = MELD_LABELS
    recipe: str = EXPERT_RECIPE
    hidden: int = 256
    dropout: float = 0.3
    input_dropout: float = 0.1
    speaker_norm: bool = True
    members: int = 1  # independently seeded MLPs whose logits are averaged
    shrink: float = 3.0  # running-mean shrinkage (in earlier turns)
    max_ref_turns: int = 16
    trained_on: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioExpertConfig:
        check_fields(cls, d, "audio expert config")
        d = dict(d)
        for k in ("labels", "trained_on"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


class AudioExpert(nn.Module):
    """Standardise → (minus the speaker reference) → MLP → logits."""

    def __init__(self, cfg: AudioExpertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mu: torch.Tensor
        self.sd: torch.Tensor
        self.register_buffer("mu", torch.zeros(STATS_DIM))  # (768,) training statistics
        self.register_buffer("sd", torch.ones(STATS_DIM))
        self.members = nn.ModuleList(
            nn.Sequential(
                nn.Dropout(cfg.input_dropout),
                nn.Linear(STATS_DIM, cfg.hidden),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.hidden, len(cfg.labels)),
            )
            for _ in range(cfg.members)
        )

    def standardize(self, stats: torch.Tensor) -> torch.Tensor:
        return (stats - self.mu) / self.sd

    def forward(self, stats: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """``stats`` (B, 768) raw clip statistics; ``ref`` (B, 768) speaker references in
        standardised space (zeros = none), used only when the expert was trained with them."""
        z = self.standardize(stats)
        if self.cfg.speaker_norm and ref is not None:
            z = z - ref
        return torch.stack([m(z) for m in self.members]).mean(0)


def speaker_reference(
    earlier: Sequence[np.ndarray], expert: AudioExpert, shrink: float | None = None
) -> np.ndarray:
    """The shrunk mean of a speaker's earlier *raw* statistics, in standardised space."""
    if not len(earlier):
        return np.zeros(STATS_DIM, dtype=np.float32)
    shrink = expert.cfg.shrink if shrink is None else shrink
    e = np.stack([np.asarray(s, dtype=np.float32)[:STATS_DIM] for s in earlier])
    mu = expert.mu.cpu().numpy()
    sd = expert.sd.cpu().numpy()
    m = ((e - mu) / sd).mean(0)
    n = e.shape[0]
    return (m * (n / (n + shrink))).astype(np.float32)


# ----------------------------------------------------------------------------- checkpoint
def save_expert(
    expert: AudioExpert, folder: str | Path, metrics: dict[str, Any] | None = None
) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in expert.state_dict().items()}, str(folder / EXPERT_WEIGHTS)
    )
    (folder / EXPERT_WEIGHTS).chmod(0o644)  # package data must be world-readable
    meta = {"config": expert.cfg.to_dict(), "metrics": metrics or {}}
    (folder / EXPERT_CONFIG).write_text(json.dumps(meta, indent=2))


def load_expert(folder: str | Path) -> AudioExpert | None:
    """The folder's audio expert, or ``None`` when it has none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / EXPERT_CONFIG).is_file():
        return None
    try:
        cfg = AudioExpertConfig.from_dict(
            json.loads((folder / EXPERT_CONFIG).read_text())["config"]
        )
        expert = AudioExpert(cfg)
        expert.load_state_dict(load_file(str(folder / EXPERT_WEIGHTS)))
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load the audio expert in {folder}: {e}") from e
    return expert.eval()


# ----------------------------------------------------------------------------- training
@dataclass
class ExpertData:
    """Clip statistics with labels and speakers; ``copy`` 0 = clean, ≥ 1 = augmented."""

    x: np.ndarray  # (N, 771) stats ⊕ meta
    y: np.ndarray  # (N,) label index
    speaker: np.ndarray  # (N,) str
    clip: np.ndarray  # (N,) str: the source clip (copies share it)
    copy: np.ndarray  # (N,) int

    def subset(self, keep: np.ndarray) -> ExpertData:
        return ExpertData(
            self.x[keep], self.y[keep], self.speaker[keep], self.clip[keep], self.copy[keep]
        )


def _reference_batch(
    data: ExpertData,
    idx: np.ndarray,
    z: np.ndarray,
    cfg: AudioExpertConfig,
    rng: np.random.Generator,
    by_speaker: dict[str, np.ndarray],
) -> np.ndarray:
    """For each example: the shrunk mean of 0–16 random *other* clean-or-augmented clips of its
    speaker (none for a quarter of them)."""
    out = np.zeros((idx.size, STATS_DIM), dtype=np.float32)
    for j, i in enumerate(idx):
        pool = by_speaker[data.speaker[i]]
        # a quarter of the examples have no reference (a speaker's first turn, an isolated clip)
        n = 0 if rng.random() < 0.25 else int(rng.integers(1, cfg.max_ref_turns + 1))
        if n == 0 or pool.size < 2:
            continue
        pick = rng.choice(pool, size=min(n, pool.size), replace=False)
        pick = pick[data.clip[pick] != data.clip[i]]
        if pick.size:
            out[j] = z[pick].mean(0) * (pick.size / (pick.size + cfg.shrink))
    return out


def causal_references(data: ExpertData, expert: AudioExpert, seed: int = 0) -> np.ndarray:
    """References as a live session would have them: each speaker's clips in a seeded random
    order, each clip referenced against the (≤ max_ref_turns) clips of that speaker before it."""
    rng = np.random.default_rng(seed)
    mu, sd = expert.mu.numpy(), expert.sd.numpy()
    z = (data.x[:, :STATS_DIM] - mu) / sd
    out = np.zeros((len(data.y), STATS_DIM), dtype=np.float32)
    for spk in np.unique(data.speaker):
        order = rng.permutation(np.flatnonzero(data.speaker == spk))
        for k, i in enumerate(order):
            prev = order[max(0, k - expert.cfg.max_ref_turns) : k]
            if prev.size:
                out[i] = z[prev].mean(0) * (prev.size / (prev.size + expert.cfg.shrink))
    return out


def train_expert(
    train: ExpertData,
    cfg: AudioExpertConfig,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch: int = 64,
    seed: int = 0,
    dev: Callable[[AudioExpert], float] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[AudioExpert, list[float]]:
    """Train one expert; with ``dev`` (a score, higher is better) keep its best epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    expert = AudioExpert(cfg)
    clean = train.x[train.copy == 0, :STATS_DIM]
    mu = clean.mean(0)
    sd = clean.std(0) + 1e-3
    expert.mu.copy_(torch.from_numpy(mu))
    expert.sd.copy_(torch.from_numpy(sd))
    n_cls = len(cfg.labels)
    counts = np.bincount(train.y, minlength=n_cls).astype(np.float64)
    weight = torch.tensor(
        np.where(counts > 0, counts.sum() / (n_cls * np.maximum(counts, 1)), 0.0),
        dtype=torch.float32,
    )
    by_speaker = {s: np.flatnonzero(train.speaker == s) for s in np.unique(train.speaker)}
    z_all = ((train.x[:, :STATS_DIM] - mu) / sd).astype(np.float32)
    y_all = torch.from_numpy(train.y.astype(np.int64))
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    scores: list[float] = []
    for k, member in enumerate(expert.members):
        torch.manual_seed(seed + 1000 * k)
        opt = torch.optim.AdamW(member.parameters(), lr=lr, weight_decay=weight_decay)
        steps = epochs * math.ceil(len(train.y) / batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.1
        )
        for ep in range(epochs):
            member.train()
            order = rng.permutation(len(train.y))
            for s in range(0, order.size, batch):
                idx = order[s : s + batch]
                z = torch.from_numpy(z_all[idx])
                if cfg.speaker_norm:
                    z = z - torch.from_numpy(
                        _reference_batch(train, idx, z_all, cfg, rng, by_speaker)
                    )
                loss = nn.functional.cross_entropy(
                    member(z), y_all[idx], weight=weight, label_smoothing=0.05
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            member.eval()
            if dev is not None and cfg.members == 1:
                score = dev(expert)
                scores.append(score)
                if log:
                    log(f"epoch {ep + 1}/{epochs}: dev {score:.4f}")
                if best is None or score > best[0]:
                    best = (score, {k2: v.clone() for k2, v in expert.state_dict().items()})
    if best is not None:
        expert.load_state_dict(best[1])
    return expert.eval(), scores


@torch.inference_mode()
def expert_logits(
    expert: AudioExpert, data: ExpertData, mode: str = "utterance", seed: int = 0
) -> np.ndarray:
    """Logits for every row: ``mode`` "utterance" (each clip alone) or "speaker" (causal
    references, :func:`causal_references`)."""
    x = torch.from_numpy(data.x[:, :STATS_DIM].astype(np.float32))
    ref = None
    if mode == "speaker" and expert.cfg.speaker_norm:
        ref = torch.from_numpy(causal_references(data, expert, seed))
    elif mode not in ("utterance", "speaker"):
        raise ValueError(f"mode must be utterance or speaker, got {mode!r}")
    return expert(x, ref).numpy()
