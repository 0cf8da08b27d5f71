"""Training on cached frozen features: loop, early stopping, resumable checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_weights, read_checkpoint_config, save_checkpoint
from .config import ModelConfig
from .datasets import Sample
from .errors import CheckpointError, ConfigError
from .features import FeatureStore, TextFrontEnd, pad_sequences
from .metrics import classification_report
from .network import EmotionNet, InterClassContrastiveLoss


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper sec. 3.2: Adam, lr 1e-4, batch 32)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4  # new modules
    lr_pretrained: float = 5e-5  # LTrans^l initialised from the language model
    weight_decay: float = 0.01
    patience: int = 3  # early stopping on dev weighted F1
    seed: int = 0
    class_weights: str = "none"  # none | sqrt | balanced
    text_dropout: float = 0.0  # drop the text of audio samples with this probability
    max_batches_per_epoch: int = 0  # 0 = all (cheap runs for tests/ablations)
    audio_repeat: int = 1  # show samples with audio this many times per epoch (they are few)
    lr_schedule: str = "constant"  # constant | cosine (linear warm-up, then cosine decay)
    warmup_frac: float = 0.0  # fraction of all training steps spent warming up (cosine)
    lr_min_ratio: float = 0.0  # cosine decays each group's lr to this fraction of its start
    audio_time_mask: float = 0.0  # mask one random span of up to this fraction of audio tokens
    aux_head_weight: float = 0.0  # + this × CE of each classifier head on its own
    init_from: str = ""  # start from this checkpoint folder's weights (same model config)
    # comma list of parameter-name prefixes: train only these, freeze the rest (e.g.
    # "audio_embed,head_stats": adapt a model to new audio frames, text path bit-identical)
    train_only: str = ""
    # also try the average of the trainable weights of the last K epochs (0 = off); it becomes
    # best/ only if its dev score beats every single epoch's
    average_last: int = 0


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(tc: TrainConfig, progress: float) -> float:
    """The learning-rate multiplier at ``progress`` ∈ [0, 1] of all training steps."""
    if tc.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {tc.lr_schedule!r}")
    if tc.lr_schedule == "constant":
        return 1.0
    progress = min(max(progress, 0.0), 1.0)
    if tc.warmup_frac > 0 and progress < tc.warmup_frac:
        return max(progress / tc.warmup_frac, 1e-3)
    rest = (progress - tc.warmup_frac) / max(1e-9, 1.0 - tc.warmup_frac)
    return tc.lr_min_ratio + (1.0 - tc.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * rest))


def time_mask(mask: torch.Tensor, max_frac: float, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment-style time masking on token masks: per row, hide one random contiguous
    span of up to ``max_frac`` of its valid tokens (at least one token stays visible)."""
    if max_frac <= 0:
        return mask
    out = mask.clone()
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        width = int(rng.integers(0, int(n * max_frac) + 1)) if n > 1 else 0
        width = min(width, n - 1)
        if width > 0:
            start = int(rng.integers(0, n - width + 1))
            out[i, start : start + width] = False
    return out


@dataclass
class Encoded:
    """One sample's cached inputs, kept in memory as fp16."""

    text: np.ndarray | None
    audio: np.ndarray | None
    label: int
    dataset: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_samples(
    samples: Sequence[Sample], store: FeatureStore, labels: Sequence[str]
) -> list[Encoded]:
    from tqdm import tqdm

    store.prefetch_text(samples)
    store.prefetch_audio(samples)
    idx = {lab: i for i, lab in enumerate(labels)}
    out = []
    for s in tqdm(samples, desc="loading features", mininterval=5):
        t, a = store.text(s), store.audio(s)
        out.append(
            Encoded(
                None if t is None else t.astype(np.float16),
                None if a is None else a.astype(np.float16),
                idx[s.label],
                s.dataset,
            )
        )
    return out


def collate(
    items: Sequence[Encoded],
    text_dim: int,
    audio_dim: int,
    cfg: ModelConfig,
    drop_text: Sequence[bool] | None = None,
    audio_time_mask: float = 0.0,
    rng: np.random.Generator | None = None,
) -> dict[str, torch.Tensor]:
    batch: dict[str, torch.Tensor] = {}
    if cfg.uses_text:
        seqs = [
            None if (drop_text and drop_text[i]) or it.text is None else it.text.astype(np.float32)
            for i, it in enumerate(items)
        ]
        t, m = pad_sequences(seqs, text_dim)
        batch.update(text=t, text_mask=m, has_text=m.any(1))
    if cfg.uses_audio:
        a, m = pad_sequences(
            [None if it.audio is None else it.audio.astype(np.float32) for it in items], audio_dim
        )
        has = m.any(1)
        if audio_time_mask > 0:  # training-time augmentation; has_audio keeps the original
            m = time_mask(m, audio_time_mask, rng or np.random.default_rng())
        batch.update(audio=a, audio_mask=m, has_audio=has)
    return batch


def build_net(cfg: ModelConfig, text_fe: TextFrontEnd | None) -> EmotionNet:
    """A fresh network; LTrans^l initialised from the language model's layers k+l."""
    text_dim = text_fe.dim if text_fe is not None else 384
    net = EmotionNet(cfg, text_dim, text_fe.hf_config if text_fe is not None else None)
    if (
        text_fe is not None
        and cfg.text_pretrained_fusion_layers
        and text_fe.full_layers is not None
    ):
        for i, blk in enumerate(net.blocks):
            lt = getattr(blk, "ltrans", None)
            if lt is not None and hasattr(lt, "layer"):
                lt.layer.load_state_dict(text_fe.full_layers[cfg.text_feature_layer + i])
    if cfg.vit_init:
        init_vtrans_from_timm(net, cfg.vit_init)
    return net


def init_vtrans_from_timm(net: EmotionNet, spec: str) -> None:
    """Initialise VTrans^l from a local pre-trained timm ViT: ``"model_name@/path/weights"``.

    The ViT's blocks must have ``audio_dim`` width (e.g. vit_small → 384).
    """
    import timm

    name, _, file = spec.partition("@")
    vit: Any = timm.create_model(
        name, pretrained=bool(file), pretrained_cfg_overlay={"file": file} if file else None
    )
    blocks: list[Any] = [
        b for b in net.blocks if hasattr(b, "vtrans") and not isinstance(b.vtrans, nn.Identity)
    ]
    for i, b in enumerate(blocks):
        b.vtrans.block.load_state_dict(vit.blocks[i].state_dict())


def freeze_except(net: EmotionNet, prefixes: str) -> int:
    """Freeze every parameter whose name starts with none of the comma-separated ``prefixes``
    (empty: train everything); returns how many parameters stay trainable."""
    keep = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    if not keep:
        return sum(p.numel() for p in net.parameters() if p.requires_grad)
    names = [n for n, _ in net.named_parameters()]
    unknown = [k for k in keep if not any(n.startswith(k) for n in names)]
    if unknown:
        raise ConfigError(f"--train-only: no parameter starts with {unknown}")
    for n, p in net.named_parameters():
        p.requires_grad_(n.startswith(keep))
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _param_groups(net: EmotionNet, tc: TrainConfig) -> list[dict[str, Any]]:
    pre: list[nn.Parameter] = []
    new: list[nn.Parameter] = []
    for n, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (pre if ".ltrans.layer." in n else new).append(p)
    groups = [{"params": new, "lr": tc.lr}]
    if pre:
        groups.append({"params": pre, "lr": tc.lr_pretrained})
    return groups


def bucketed_batches(
    data: Sequence[Encoded], batch_size: int, rng: np.random.Generator, audio_repeat: int = 1
) -> list[list[int]]:
    """Shuffled batches grouped by modality presence and similar text length.

    Why: a text-only sample padded to a batch's audio length, or a short text padded
    to a long one, costs as much as real tokens; on a CPU that is most of the time.
    """

    def tlen(i: int) -> int:
        t = data[i].text
        return 0 if t is None else t.shape[0]

    batches: list[list[int]] = []
    perm = rng.permutation(len(data))
    for has_audio in (False, True):
        idx = [int(i) for i in perm if (data[i].audio is not None) == has_audio]
        if has_audio and audio_repeat > 1:
            idx = [int(i) for i in rng.permutation(idx * audio_repeat)]
        chunk = batch_size * 50
        for c in range(0, len(idx), chunk):
            part = sorted(idx[c : c + chunk], key=tlen)
            batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def class_weight_tensor(train: Sequence[Encoded], n: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = np.bincount([e.label for e in train], minlength=n).astype(np.float64) + 1.0
    w = (counts.sum() / counts) if mode == "balanced" else np.sqrt(counts.sum() / counts)
    return torch.tensor(w / (w * counts).sum() * counts.sum(), dtype=torch.float32)


@torch.inference_mode()
def outputs_encoded(
    net: EmotionNet, data: Sequence[Encoded], text_dim: int, audio_dim: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) and fused CLS features (N, D_F) for cached samples (batched by length)."""
    net.eval()

    def key(i: int) -> tuple[int, int]:
        e = data[i]
        return (0 if e.audio is None else 1, 0 if e.text is None else e.text.shape[0])

    order = sorted(range(len(data)), key=key)
    logits = np.zeros((len(data), len(net.cfg.labels)), dtype=np.float32)
    feats: np.ndarray | None = None
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        batch = collate([data[j] for j in idx], text_dim, audio_dim, net.cfg)
        out = net(**batch)
        if feats is None:
            feats = np.zeros((len(data), out.features.shape[1]), dtype=np.float32)
        logits[idx] = out.logits.float().numpy()
        feats[idx] = out.features.float().numpy()
    return logits, feats if feats is not None else np.zeros((0, 0), np.float32)


def predict_encoded(
    net: EmotionNet, data: Sequence[Encoded], text_dim: int, audio_dim: int, batch_size: int = 64
) -> np.ndarray:
    """Class probabilities (N, C) for cached samples."""
    logits, _ = outputs_encoded(net, data, text_dim, audio_dim, batch_size)
    return torch.softmax(torch.from_numpy(logits), -1).numpy()


def dev_score(
    net: EmotionNet, dev: Sequence[Encoded], text_dim: int, audio_dim: int
) -> tuple[float, dict[str, Any]]:
    """Mean over dev datasets of weighted F1 (each corpus counts the same)."""
    probs = predict_encoded(net, dev, text_dim, audio_dim)
    per: dict[str, Any] = {}
    for ds in sorted({e.dataset for e in dev}):
        idx = [i for i, e in enumerate(dev) if e.dataset == ds]
        y = np.array([dev[i].label for i in idx])
        per[ds] = classification_report(y, probs[idx].argmax(1), net.cfg.labels)
    score = float(np.mean([r["weighted_f1"] for r in per.values()]))
    return score, per


#: Config fields that change the inputs, not the network: a checkpoint may be fine-tuned into
#: another value (e.g. adapting a model to the frames of a cheaper Whisper encoder window).
INPUT_RECIPE_FIELDS = frozenset({"whisper_window"})


def init_net(net: EmotionNet, path: str | Path) -> None:
    """Load a checkpoint folder's weights into ``net``; its model config must be the same,
    except for :data:`INPUT_RECIPE_FIELDS`."""
    ck_cfg, _ = read_checkpoint_config(path)
    ours, theirs = net.cfg.to_dict(), ck_cfg.to_dict()
    diff = sorted(k for k, v in ours.items() if theirs.get(k) != v and k not in INPUT_RECIPE_FIELDS)
    if diff:
        raise CheckpointError(f"{path}: model config differs from this run's in {diff}")
    load_weights(net, path)


def train(
    cfg: ModelConfig,
    tc: TrainConfig,
    train_data: Sequence[Encoded],
    dev_data: Sequence[Encoded],
    text_fe: TextFrontEnd | None,
    out_dir: str | Path,
    resume: bool = True,
    extra_meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, keep the best (dev weighted F1) as a checkpoint folder ``out_dir/best``.

    ``out_dir/last.pt`` holds the full training state; a rerun resumes from it.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(tc.seed)
    net = build_net(cfg, text_fe)
    text_dim = net.text_dim
    audio_dim = cfg.whisper_dim if cfg.audio_frontend == "whisper" else cfg.mel_bins
    lr_factor(tc, 0.0)  # validates lr_schedule before any work
    trainable = freeze_except(net, tc.train_only)
    if tc.train_only:
        print(json.dumps({"train_only": tc.train_only, "trainable_params": trainable}))
    opt = torch.optim.AdamW(_param_groups(net, tc), weight_decay=tc.weight_decay)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    icl = InterClassContrastiveLoss(cfg.icl_temperature, cfg.icl_normalize)
    cw = class_weight_tensor(train_data, len(cfg.labels), tc.class_weights)
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "history": []}
    snapshots: list[dict[str, torch.Tensor]] = []  # trainable weights of the last epochs
    last = out / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        if ck.get("model_config") != cfg.to_dict():
            raise CheckpointError(
                f"{last} was trained with another config; use a new --out or --no-resume"
            )
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        snapshots = ck.get("snapshots", [])
        random.setstate(ck["rng_py"])
        np.random.set_state(ck["rng_np"])
        torch.set_rng_state(ck["rng_torch"])
    elif tc.init_from:
        # Fine-tuning: start from a checkpoint's weights; its dev score is the bar to beat, so
        # best/ is only written by an epoch that improves on where training started.
        init_net(net, tc.init_from)
        state["init_dev_score"], _ = dev_score(net, dev_data, text_dim, audio_dim)
        state["best"] = state["init_dev_score"]
        print(json.dumps({"epoch": 0, "init_from": tc.init_from, "dev_score": state["best"]}))
    while state["epoch"] < tc.epochs and state["bad_epochs"] < tc.patience:
        net.train()
        rng = np.random.default_rng(tc.seed * 1000 + state["epoch"])
        batches = bucketed_batches(train_data, tc.batch_size, rng, tc.audio_repeat)
        n_batches = len(batches)
        if tc.max_batches_per_epoch:
            n_batches = min(n_batches, tc.max_batches_per_epoch)
        t0, tot, tot_icl = time.time(), 0.0, 0.0
        bar = tqdm(
            range(n_batches),
            desc=f"epoch {state['epoch'] + 1}/{tc.epochs}",
            disable=not progress,
            mininterval=10,
        )
        for b in bar:
            items = [train_data[i] for i in batches[b]]
            drop = [it.audio is not None and rng.random() < tc.text_dropout for it in items]
            batch = collate(items, text_dim, audio_dim, cfg, drop, tc.audio_time_mask, rng)
            y = torch.tensor([it.label for it in items])
            f = lr_factor(tc, (state["epoch"] + b / n_batches) / max(1, tc.epochs))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            o = net(**batch)
            loss_ce = F.cross_entropy(o.logits, y, weight=cw)  # eq. 5
            loss_icl = icl(o.features, y) if cfg.icl_weight > 0 else torch.zeros(())  # eq. 7
            loss = loss_ce + cfg.icl_weight * loss_icl
            if tc.aux_head_weight > 0 and len(o.head_logits) > 1:
                # deep supervision: each head must classify on its own (the stats head only
                # on samples that have audio)
                for h, hl in enumerate(o.head_logits):
                    keep = (
                        batch["has_audio"]
                        if h == len(o.head_logits) - 1 and (net.head_stats is not None)
                        else torch.ones_like(y, dtype=torch.bool)
                    )
                    if bool(keep.any()):
                        loss = loss + tc.aux_head_weight * F.cross_entropy(
                            hl[keep], y[keep], weight=cw
                        )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            tot += float(loss_ce.detach())
            tot_icl += float(loss_icl.detach())
            if b % 20 == 0:
                bar.set_postfix(ce=f"{tot / (b + 1):.3f}", icl=f"{tot_icl / (b + 1):.3f}")
        score, per = dev_score(net, dev_data, text_dim, audio_dim)
        state["epoch"] += 1
        rec = {
            "epoch": state["epoch"],
            "train_ce": tot / max(1, n_batches),
            "train_icl": tot_icl / max(1, n_batches),
            "dev_score": score,
            "dev": {k: {m: v[m] for m in ("accuracy", "weighted_f1")} for k, v in per.items()},
            "seconds": round(time.time() - t0, 1),
        }
        state["history"].append(rec)
        print(json.dumps(rec), flush=True)
        if score > state["best"]:
            state["best"], state["bad_epochs"] = score, 0
            meta = {
                "train": dataclasses.asdict(tc),
                "best_epoch": state["epoch"],
                "dev": per,
                **(extra_meta or {}),
            }
            save_checkpoint(net, out / "best", extra=meta)
            save_checkpoint(net, out / "best_fp32", dtype=torch.float32)
        else:
            state["bad_epochs"] += 1
        if tc.average_last > 1:
            snapshots.append(
                {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
            )
            snapshots = snapshots[-tc.average_last :]
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "state": state,
                "snapshots": snapshots,
                "model_config": cfg.to_dict(),
                "rng_py": random.getstate(),
                "rng_np": np.random.get_state(),
                "rng_torch": torch.get_rng_state(),
            },
            last,
        )
    if tc.average_last > 1 and len(snapshots) > 1 and "averaged" not in state:
        import copy

        avg = copy.deepcopy(net)
        _try_average(avg, snapshots, state, tc, dev_data, text_dim, audio_dim, out, extra_meta)
        ck = torch.load(last, map_location="cpu", weights_only=False)
        ck["state"] = state  # a rerun of the finished run does not average again
        torch.save(ck, last)
    return state


def _try_average(
    net: EmotionNet,
    snapshots: list[dict[str, torch.Tensor]],
    state: dict[str, Any],
    tc: TrainConfig,
    dev_data: Sequence[Encoded],
    text_dim: int,
    audio_dim: int,
    out: Path,
    extra_meta: dict[str, Any] | None,
) -> None:
    """Average the last epochs' trainable weights (stochastic weight averaging over epochs):
    kept as best/ only when it beats every single epoch on dev."""
    first = state["epoch"] - len(snapshots) + 1
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name in snapshots[0]:
            params[name].copy_(torch.stack([s[name] for s in snapshots]).mean(0))
    score, per = dev_score(net, dev_data, text_dim, audio_dim)
    state["averaged"] = {"epochs": [first, state["epoch"]], "dev_score": score}
    print(json.dumps({"averaged_epochs": [first, state["epoch"]], "dev_score": score}), flush=True)
    if score > state["best"]:
        state["best"] = score
        meta = {
            "train": dataclasses.asdict(tc),
            "best_epoch": f"mean of epochs {first}-{state['epoch']}",
            "dev": per,
            **(extra_meta or {}),
        }
        save_checkpoint(net, out / "best", extra=meta)
        save_checkpoint(net, out / "best_fp32", dtype=torch.float32)
