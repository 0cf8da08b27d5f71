"""Causal conversation context on top of the utterance model (CFN-ESA-style, MODEL.md §2).

The utterance network classifies each utterance on its own. In a conversation the previous
turns carry information too (who spoke, what they felt, whether this speaker's emotion has just
shifted). This module adds that, for a live monitor, using the *past* only:

* Every classified utterance leaves a **turn memory**: the utterance network's fused CLS
  features (eq. 6's F) followed by its logits. It is what the worker stores per session
  (in memory, or in Redis next to the stream) — not text, not audio.
* For a new utterance, the last ``turns`` memories of its session, oldest first, each tagged
  with whether it was the *same speaker*, go through a GRU. The GRU state, the current
  utterance's projected features and their product feed an MLP whose output is **added** to the
  utterance network's logits. The MLP's last layer starts at zero, and with no history the
  correction is exactly zero: the first turn of a session (and every isolated clip, e.g. RAVDESS)
  gets the utterance network's answer bit for bit.
* An auxiliary **emotion-shift** output (CFN-ESA's ESA: did this speaker's emotion change since
  their previous turn?) is trained alongside with weight ``esa_weight``; it guides the
  representation and is not used at inference.
* ``members`` heads trained with different seeds are averaged (their corrections), which
  steadies a head selected on a small dev set.

The utterance network stays frozen: training the context costs seconds per epoch on CPU over
cached turn memories (``emomon train-context``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import check_fields
from .errors import CheckpointError, ConfigError

CONTEXT_WEIGHTS = "context.safetensors"
CONTEXT_CONFIG = "context.json"
CONTEXT_FORMAT = 1


@dataclass(frozen=True)
class ContextConfig:
    """The context head's shape and its training recipe."""

    turns: int = 8  # how many previous turns of the session it reads
    hidden: int = 128
    dropout: float = 0.3
    esa_weight: float = 0.3  # weight of the emotion-shift auxiliary loss
    members: int = 5  # heads averaged (seeds seed .. seed+members-1)
    epochs: int = 15
    lr: float = 3e-4
    weight_decay: float = 0.01
    batch_size: int = 64
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("turns", "hidden", "members", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"context.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"context.dropout must be in [0, 1), got {self.dropout}")
        if self.esa_weight < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("context.esa_weight and weight_decay must be >= 0, lr > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContextConfig:
        check_fields(cls, d, "context config")
        return cls(**d)


@dataclass(frozen=True)
class ContextTurn:
    """One earlier turn of the session, as the context head sees it."""

    memory: np.ndarray  # (feat_dim + num_labels,) from EmotionPrediction.memory
    same_speaker: bool  # spoken by the speaker of the utterance being classified


class ContextHead(nn.Module):
    """One head: GRU over past turns → additive logit correction (+ emotion-shift logit)."""

    def __init__(self, feat_dim: int, num_labels: int, cfg: ContextConfig) -> None:
        super().__init__()
        h, c = cfg.hidden, num_labels
        self.feat_dim, self.num_labels = feat_dim, num_labels
        self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(feat_dim, h), nn.GELU())
        self.gru = nn.GRU(h + c + 1, h, batch_first=True)
        first, last = nn.Linear(3 * h, h), nn.Linear(h, c)  # this order: seeded inits reproduce
        nn.init.zeros_(last.weight)  # no correction until trained
        nn.init.zeros_(last.bias)
        self.out = nn.Sequential(first, nn.GELU(), nn.Dropout(cfg.dropout), last)
        self.esa = nn.Linear(2 * h, 1)

    def forward(
        self,
        feats: torch.Tensor,  # (B, D) current utterance's F
        hist: torch.Tensor,  # (B, K, D + C) past memories, left-padded (oldest first)
        same: torch.Tensor,  # (B, K) same speaker
        valid: torch.Tensor,  # (B, K) bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (correction (B, C) — zero where there is no history, shift logit (B,))."""
        d = self.feat_dim
        q = self.proj(feats)
        hx = torch.cat(
            [self.proj(hist[..., :d]), torch.softmax(hist[..., d:], -1), same.unsqueeze(-1)], -1
        ) * valid.unsqueeze(-1).to(feats.dtype)
        _, h = self.gru(hx)
        h = h[0]
        has = valid.any(1).to(feats.dtype).unsqueeze(-1)
        corr = self.out(torch.cat([h, q, h * q], -1)) * has
        return corr, self.esa(torch.cat([h, q], -1)).squeeze(-1)


class ContextModel(nn.Module):
    """``members`` heads; the corrections are averaged and added to the utterance logits."""

    def __init__(self, feat_dim: int, num_labels: int, cfg: ContextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.feat_dim, self.num_labels = feat_dim, num_labels
        self.heads = nn.ModuleList(
            ContextHead(feat_dim, num_labels, cfg) for _ in range(cfg.members)
        )

    @property
    def memory_dim(self) -> int:
        return self.feat_dim + self.num_labels

    def forward(
        self,
        feats: torch.Tensor,
        logits: torch.Tensor,
        hist: torch.Tensor,
        same: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        corr = torch.stack([h(feats, hist, same, valid)[0] for h in self.heads]).mean(0)
        return logits + corr

    def batch_history(
        self, histories: Sequence[Sequence[ContextTurn]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-pad each utterance's last ``turns`` turns into (hist, same, valid) tensors."""
        k, dm = self.cfg.turns, self.memory_dim
        b = len(histories)
        hist = np.zeros((b, k, dm), np.float32)
        same = np.zeros((b, k), np.float32)
        valid = np.zeros((b, k), bool)
        for i, turns in enumerate(histories):
            last = list(turns)[-k:]
            for j, t in enumerate(last):
                pos = k - len(last) + j
                m = np.asarray(t.memory, np.float32).reshape(-1)
                if m.shape[0] > dm:  # longer memories carry more after the context's part
                    m = m[:dm]
                if m.shape[0] != dm:
                    raise ConfigError(
                        f"a context turn's memory has {m.shape[0]} values, this model needs {dm}"
                    )
                hist[i, pos], same[i, pos], valid[i, pos] = m, float(t.same_speaker), True
        return torch.from_numpy(hist), torch.from_numpy(same), torch.from_numpy(valid)


# ------------------------------------------------------------------------ checkpoint files
def save_context(
    model: ContextModel, path: str | Path, extra: dict[str, Any] | None = None
) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / CONTEXT_WEIGHTS))
    (path / CONTEXT_WEIGHTS).chmod(0o644)
    meta = {
        "format_version": CONTEXT_FORMAT,
        "context": model.cfg.to_dict(),
        "feat_dim": model.feat_dim,
        "num_labels": model.num_labels,
        "memory": "the utterance network's fused CLS features (eq. 6's F) then its logits",
        **({"trained": extra} if extra else {}),
    }
    (path / CONTEXT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def load_context(path: str | Path) -> ContextModel | None:
    """The checkpoint folder's context model (fp32, eval mode), or None if it has none."""
    from safetensors.torch import load_file

    path = Path(path)
    cfile, wfile = path / CONTEXT_CONFIG, path / CONTEXT_WEIGHTS
    if not cfile.is_file() and not wfile.is_file():
        return None
    if not cfile.is_file() or not wfile.is_file():
        raise CheckpointError(f"{path}: needs both {CONTEXT_CONFIG} and {CONTEXT_WEIGHTS}")
    meta = json.loads(cfile.read_text())
    if meta.get("format_version") != CONTEXT_FORMAT:
        raise CheckpointError(f"{path}/{CONTEXT_CONFIG}: format {meta.get('format_version')}")
    try:
        cfg = ContextConfig.from_dict(meta["context"])
    except ConfigError as e:
        raise CheckpointError(f"{path}/{CONTEXT_CONFIG}: {e}") from e
    model = ContextModel(int(meta["feat_dim"]), int(meta["num_labels"]), cfg)
    state = {k: v.float() for k, v in load_file(str(wfile)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: context weights do not match {CONTEXT_CONFIG} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


# --------------------------------------------------------------------------- training
@dataclass
class TurnData:
    """A corpus as the context head trains on it: every utterance's memory, in order."""

    feats: torch.Tensor  # (N, D)
    logits: torch.Tensor  # (N, C)
    labels: torch.Tensor  # (N,)
    hist: torch.Tensor  # (N, K) indices of the previous turns (-1 = none), oldest first
    same: torch.Tensor  # (N, K)
    prev_same: torch.Tensor  # (N,) index of this speaker's previous turn (-1 = none)


def history_index(
    groups: Sequence[str], speakers: Sequence[str], turns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For samples listed in conversation order (within each group), the indices of each one's
    previous ``turns`` turns in its group, left-padded with -1; same-speaker flags; and the
    index of the same speaker's previous turn (-1 = none)."""
    n = len(groups)
    hist = np.full((n, turns), -1, np.int64)
    same = np.zeros((n, turns), np.float32)
    prev = np.full(n, -1, np.int64)
    seen: dict[str, list[int]] = {}
    for i, (g, s) in enumerate(zip(groups, speakers, strict=True)):
        before = seen.setdefault(g, [])
        last = before[-turns:]
        for j, p in enumerate(last):
            pos = turns - len(last) + j
            hist[i, pos] = p
            same[i, pos] = float(speakers[p] == s)
        for p in reversed(before):
            if speakers[p] == s:
                prev[i] = p
                break
        before.append(i)
    return hist, same, prev


def turn_data(
    feats: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    speakers: Sequence[str],
    turns: int,
) -> TurnData:
    hist, same, prev = history_index(groups, speakers, turns)
    return TurnData(
        torch.as_tensor(feats, dtype=torch.float32),
        torch.as_tensor(logits, dtype=torch.float32),
        torch.as_tensor(labels, dtype=torch.long),
        torch.from_numpy(hist),
        torch.from_numpy(same),
        torch.from_numpy(prev),
    )


def _history(d: TurnData, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (hist, same, valid) inputs of turns ``idx``: their earlier turns' memories."""
    hi = d.hist[idx]
    hc = hi.clamp_min(0)
    return torch.cat([d.feats[hc], d.logits[hc]], -1), d.same[idx], hi >= 0


def _head_forward(
    head: ContextHead, d: TurnData, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    corr, esa = head(d.feats[idx], *_history(d, idx))
    return d.logits[idx] + corr, esa


def head_logits(head: ContextHead, d: TurnData, batch: int = 512) -> torch.Tensor:
    head.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(d.labels), batch):
            out.append(_head_forward(head, d, torch.arange(i, min(i + batch, len(d.labels))))[0])
    return torch.cat(out)


def train_context(
    cfg: ContextConfig,
    train: TurnData,
    dev: TurnData,
    score: Any,
    log: Any = print,
) -> tuple[ContextModel, list[dict[str, Any]]]:
    """Train ``cfg.members`` heads (seeds ``cfg.seed`` …); each keeps its best epoch by
    ``score(dev_logits) -> float`` (higher is better). Returns the model and a per-head log."""
    import torch.nn.functional as F

    feat_dim, c = train.feats.shape[1], train.logits.shape[1]
    model = ContextModel(feat_dim, c, cfg)
    report: list[dict[str, Any]] = []
    n = len(train.labels)
    for m, module in enumerate(model.heads):
        assert isinstance(module, ContextHead)
        head = module
        seed = cfg.seed + m
        torch.manual_seed(seed)
        fresh = ContextHead(feat_dim, c, cfg)  # initialised under this member's seed
        head.load_state_dict(fresh.state_dict())
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best: tuple[float, int, dict[str, torch.Tensor] | None] = (-1.0, -1, None)
        scores = []
        for ep in range(cfg.epochs):
            head.train()
            perm = torch.randperm(n, generator=gen)
            for b in range(0, n, cfg.batch_size):
                idx = perm[b : b + cfg.batch_size]
                out, esa = _head_forward(head, train, idx)
                loss = F.cross_entropy(out, train.labels[idx])
                pv = train.prev_same[idx]
                ok = pv >= 0
                if cfg.esa_weight > 0 and bool(ok.any()):
                    shifted = (train.labels[idx][ok] != train.labels[pv[ok]]).float()
                    loss = loss + cfg.esa_weight * F.binary_cross_entropy_with_logits(
                        esa[ok], shifted
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
            s = float(score(head_logits(head, dev)))
            scores.append(round(s, 4))
            if s > best[0]:
                best = (s, ep, {k: v.clone() for k, v in head.state_dict().items()})
        assert best[2] is not None
        head.load_state_dict(best[2])
        report.append(
            {"seed": seed, "best_epoch": best[1] + 1, "dev": best[0], "dev_by_epoch": scores}
        )
        log(
            f"context head {m + 1}/{cfg.members} (seed {seed}): best dev {best[0]:.4f} at epoch {best[1] + 1}"
        )
    return model.eval(), report


def model_logits(model: ContextModel, d: TurnData, batch: int = 512) -> torch.Tensor:
    """The averaged heads' logits for every turn of ``d`` (history from ``d`` itself)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(d.labels), batch):
            idx = torch.arange(i, min(i + batch, len(d.labels)))
            out.append(model(d.feats[idx], d.logits[idx], *_history(d, idx)))
    return torch.cat(out)


__all__ = [
    "ContextConfig",
    "ContextHead",
    "ContextModel",
    "ContextTurn",
    "TurnData",
    "history_index",
    "load_context",
    "model_logits",
    "save_context",
    "train_context",
    "turn_data",
]
