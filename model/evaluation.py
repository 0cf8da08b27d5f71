"""Evaluating a checkpoint through the feature caches, as the live path runs it.

:func:`evaluate_samples` scores the utterance network's joint answer (with the conversation
context where the samples form dialogues); :func:`gated_report` scores text-led fusion
(model.gate).

The text expert's logits come from the utterance network on the transcript alone (with the
conversation context where the samples form dialogues), the audio expert's from the clip
statistics of :mod:`model.expert_data` (the live recipe), and :func:`model.gate.fuse`
combines them exactly as :meth:`EmotionModel.predict` does.
"""

from __future__ import annotations

import dataclasses as dc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import Sample
from .gate import expected_calibration_error, fuse


def base_outputs(
    model: Any, samples: list[Sample], cache_dir: str, batch_size: int = 1
) -> tuple[Any, Any, Any, list[Any]]:
    """The utterance network's logits (N, C) and fused features (N, D_F) for ``samples``
    through the feature cache, and their label indices (N,). ``batch_size`` 1 is what a live
    session does at low load; with int8 on CPU larger batches change answers slightly (dynamic
    quantisation scales activations per batch, and the padding of batch-mates is counted)."""
    from .features import FeatureStore
    from .train import encode_samples, outputs_encoded

    cfg = model.cfg
    store = FeatureStore(cfg, cache_dir, model.text_fe, text_batch=batch_size)
    enc = encode_samples(samples, store, cfg.labels)
    audio_dim = cfg.whisper_dim if cfg.audio_frontend == "whisper" else cfg.mel_bins
    logits, feats = outputs_encoded(
        model.net, enc, model.net.text_dim, audio_dim, batch_size=batch_size
    )
    return logits, feats, np.array([e.label for e in enc]), enc


def conversation_keys(samples: Sequence[Sample]) -> tuple[list[str], list[str]]:
    """Dialogue and speaker per sample; an isolated clip is a dialogue of its own."""
    groups = [s.dialogue or f"\x00{s.uid}" for s in samples]
    return groups, [s.speaker for s in samples]


def evaluate_samples(
    model: Any,
    samples: list[Sample],
    cache_dir: str,
    modalities: set[str],
    context: bool = True,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Evaluate an :class:`EmotionModel` on samples through the feature cache. With
    ``context`` and a checkpoint that has a context model, samples of a dialogue see the
    turns before them (causal), as in a live session; isolated clips are unaffected."""
    from .context import model_logits, turn_data
    from .metrics import classification_report

    cfg = model.cfg
    if "audio" not in modalities:
        samples = [dc.replace(s, audio_path=None) for s in samples]
    if "text" not in modalities:
        samples = [dc.replace(s, text=None) for s in samples]
    logits, feats, y, enc = base_outputs(model, samples, cache_dir, batch_size)
    use_ctx = context and model.context is not None
    n_ctx = 0
    if use_ctx:
        groups, speakers = conversation_keys(samples)
        td = turn_data(feats, logits, y, groups, speakers, model.context.cfg.turns)
        n_ctx = int((td.hist >= 0).any(1).sum())
        logits = model_logits(model.context, td).numpy()
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    rep = classification_report(y, probs.argmax(1), cfg.labels)
    rep["ece_15"] = round(100 * expected_calibration_error(probs, y), 2)
    rep["fusion"] = "jfm"
    rep["modalities_used"] = {
        "text": int(sum(e.text is not None for e in enc)),
        "audio": int(sum(e.audio is not None for e in enc)),
    }
    rep["batch_size"] = batch_size
    rep["context"] = {
        "used": bool(use_ctx),
        "utterances_with_history": n_ctx,
        "turns": model.context.cfg.turns if use_ctx else 0,
    }
    return rep


def text_logits(
    model: Any,
    samples: Sequence[Sample],
    cache_dir: str | Path,
    batch_size: int = 1,
    context: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(logits (N, C), has_text (N,), labels (N,), utterances that read ≥ 1 context turn)."""
    from .context import model_logits, turn_data

    text_only = [dc.replace(s, audio_path=None) for s in samples]
    logits, feats, y, enc = base_outputs(model, text_only, str(cache_dir), batch_size)
    n_ctx = 0
    if context and model.context is not None:
        groups, spk = conversation_keys(text_only)
        td = turn_data(feats, logits, y, groups, spk, model.context.cfg.turns)
        n_ctx = int((td.hist >= 0).any(1).sum())
        logits = model_logits(model.context, td).numpy()
    has_text = np.array([e.text is not None for e in enc])
    return np.asarray(logits, np.float32), has_text, np.asarray(y), n_ctx


def audio_rows(
    model: Any,
    samples: Sequence[Sample],
    cache_dir: str | Path,
    gain_db: float = 0.0,
    workers: int = 2,
    sessions: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expert logits (N, C), meta (N, 3), has_audio (N,)) aligned with ``samples``. Each clip
    is read alone, or (``sessions``) relative to its speaker's earlier clips, as a live session
    reads a speaker: each speaker's clips in a seeded order, each referenced against the ones
    before it (``audio_expert.causal_references``)."""
    from . import expert_data
    from .audio_expert import expert_logits

    n, c = len(samples), len(model.labels)
    logits = np.zeros((n, c), np.float32)
    meta = np.zeros((n, 3), np.float32)
    has = np.zeros(n, bool)
    with_audio = [s for s in samples if s.audio_path is not None]
    if not with_audio or model.expert is None:
        return logits, meta, has
    data = expert_data.build(
        with_audio,
        model.labels,
        cache_dir,
        0,
        model.expert.cfg.recipe,
        workers,
        gain_db,
        progress=False,
    )
    pos = {s.uid: i for i, s in enumerate(samples)}
    idx = np.array([pos[u] for u in data.clip], dtype=int)
    logits[idx] = expert_logits(model.expert, data, "speaker" if sessions else "utterance")
    meta[idx] = data.x[:, -3:]
    has[idx] = True
    return logits, meta, has


def gated_report(
    model: Any,
    samples: Sequence[Sample],
    cache_dir: str | Path,
    modalities: set[str],
    batch_size: int = 1,
    context: bool = True,
    gain_db: float = 0.0,
    veto: bool = True,
    sessions: bool = False,
) -> dict[str, Any]:
    """Metrics of text-led fusion on ``samples`` (+ ECE, outcome counts, mean audio weight)."""
    from .metrics import classification_report

    n, c = len(samples), len(model.labels)
    if "text" in modalities:
        tl, ht, y, n_ctx = text_logits(model, samples, cache_dir, batch_size, context)
    else:
        index = {lab: i for i, lab in enumerate(model.labels)}
        tl, ht, y, n_ctx = (
            np.zeros((n, c), np.float32),
            np.zeros(n, bool),
            np.array([index[s.label] for s in samples]),
            0,
        )
    if "audio" in modalities:
        al, meta, ha = audio_rows(model, samples, cache_dir, gain_db, sessions=sessions)
    else:
        al, meta, ha = np.zeros((n, c), np.float32), np.zeros((n, 3), np.float32), np.zeros(n, bool)
    fused, alpha = fuse(
        torch.from_numpy(tl),
        torch.from_numpy(ht),
        torch.from_numpy(al),
        torch.from_numpy(ha),
        torch.from_numpy(meta),
        model.gate,
        veto=veto,
    )
    probs = fused.exp().numpy()
    rep = classification_report(y, probs.argmax(1), model.labels)
    conf = probs.max(1)
    no_speech = (~ht) & (
        (~ha)
        | (meta[:, 2] < model.gate.no_speech_voiced)
        | (meta[:, 1] < model.gate.no_speech_min_s)
    )
    uncertain = (~no_speech) & (conf < model.min_confidence)
    rep["ece_15"] = round(100 * expected_calibration_error(probs, y), 2)
    rep["outcomes"] = {
        "emotion": int((~no_speech & ~uncertain).sum()),
        "uncertain": int(uncertain.sum()),
        "no_speech": int(no_speech.sum()),
    }
    rep["min_confidence"] = model.min_confidence
    rep["mean_audio_weight"] = round(
        float(alpha[torch.from_numpy(ha)].mean()) if ha.any() else 0.0, 3
    )
    rep["modalities_used"] = {"text": int(ht.sum()), "audio": int(ha.sum())}
    rep["context"] = {
        "used": bool(context and model.context is not None),
        "utterances_with_history": n_ctx,
    }
    rep["fusion"] = "gated" + ("" if veto else " (no text veto)")
    rep["audio_reference"] = (
        "speaker's earlier clips (causal)" if sessions else "none (each clip alone)"
    )
    rep["level_variant"] = {0.0: "as recorded"}.get(gain_db, f"code {gain_db:g}")
    rep["batch_size"] = batch_size
    return rep
