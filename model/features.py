"""Frozen front-ends: text-encoder states, Whisper tokens, log-mel frames, and their cache.

These run outside :class:`~emomon.model.network.EmotionNet` so training can read
them from disk (:mod:`emomon.model.cache`) while inference computes them live
with exactly the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import (
    WhisperWindow,
    audio_is_usable,
    decode_audio,
    load_whisper_model,
    whisper_encoder_frames,
)
from .cache import NpyCache, file_key, text_key
from .config import ModelConfig
from .datasets import Sample
from .text_encoders import text_encoder_path


def resolve_text_encoder(name: str) -> Path:
    """The local folder of a text encoder: a registered name or a local HF folder
    (:func:`emomon.model.text_encoders.text_encoder_path`)."""
    return text_encoder_path(name)


def context_string(context: Sequence[str], turns: int) -> str | None:
    """Causal context as the tokenizer's second segment, most recent utterance first
    (so truncation drops the oldest)."""
    if turns <= 0 or not context:
        return None
    return " | ".join(reversed([c for c in context[-turns:] if c]))


class TextFrontEnd:
    """Tokenizer + the frozen bottom ``k`` layers of the language transformer → F_t input."""

    def __init__(self, cfg: ModelConfig, device: str | torch.device = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.cfg = cfg
        self.path = resolve_text_encoder(cfg.text_encoder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.hf_config = AutoConfig.from_pretrained(str(self.path))
        model = AutoModel.from_pretrained(str(self.path))
        self.full_layers = None
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if layers is not None:
            self.full_layers = [layers[i].state_dict() for i in range(len(layers))]
            model.encoder.layer = layers[: cfg.text_feature_layer]  # hidden_states[k] only
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dim = int(self.hf_config.hidden_size)
        self.tag = f"{cfg.text_encoder_id}|L{cfg.text_feature_layer}|max{cfg.text_max_tokens}"

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], contexts: Sequence[str | None] | None = None
    ) -> list[np.ndarray]:
        """(T_i, D) float32 hidden states of layer k for each non-empty text."""
        if not texts:
            return []
        ctx = list(contexts) if contexts is not None else [None] * len(texts)
        if any(c for c in ctx):
            enc = self.tokenizer(
                # longest_first: the (usually longer) context is cut first, and a very long
                # utterance cannot make truncation fail as "only_second" would
                list(texts),
                [c or "" for c in ctx],
                truncation="longest_first",
                max_length=self.cfg.text_max_tokens,
                padding=True,
                return_tensors="pt",
            )
        else:
            enc = self.tokenizer(
                list(texts),
                truncation=True,
                max_length=self.cfg.text_max_tokens,
                padding=True,
                return_tensors="pt",
            )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state.float().cpu().numpy()  # (B, T, D)
        lengths = enc["attention_mask"].sum(1).cpu().numpy()
        return [hidden[i, : int(n)] for i, n in enumerate(lengths)]

    def encode_tensors(
        self, texts: Sequence[str], contexts: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched version for inference: (B, T, D) and a (B, T) bool mask, on device."""
        feats = self.encode(texts, contexts)
        return pad_sequences(feats, self.dim)


def pad_sequences(seqs: Sequence[np.ndarray | None], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (T_i, D) arrays into (B, T, D) with a bool mask; ``None`` → one masked row."""
    t = max([1] + [s.shape[0] for s in seqs if s is not None])
    out = np.zeros((len(seqs), t, dim), dtype=np.float32)
    mask = np.zeros((len(seqs), t), dtype=bool)
    for i, s in enumerate(seqs):
        if s is not None and s.shape[0]:
            out[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def whisper_tokens(frames: np.ndarray, pool: int, max_tokens: int) -> np.ndarray:
    """(T, D) Whisper frames → (T', D) audio tokens: mean-pool by ``pool`` in time, then
    adaptive mean-pool down to ``max_tokens`` if still longer."""
    frames = np.asarray(frames, dtype=np.float32)
    t, d = frames.shape
    n = max(1, -(-t // pool))
    edges = (
        np.linspace(0, t, n + 1).round().astype(int)
        if n * pool > t
        else np.arange(0, n * pool + 1, pool)
    )
    if n > max_tokens:
        n = max_tokens
        edges = np.linspace(0, t, n + 1).round().astype(int)
    out = np.stack([frames[edges[i] : max(edges[i + 1], edges[i] + 1)].mean(0) for i in range(n)])
    return out.astype(np.float32)  # (T', D)


def log_mel(audio: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """(T, n_mels) log-mel frames, 10 ms hop, 25 ms window (the paper's front-end)."""
    import torchaudio

    x = torch.from_numpy(np.asarray(audio, dtype=np.float32)[: int(cfg.mel_max_s * 16000)])
    mel = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=400, hop_length=160, n_mels=cfg.mel_bins
    )(x)
    mel = torch.log10(mel.clamp_min(1e-10))
    mel = (mel.clamp_min(mel.max() - 8.0) + 4.0) / 4.0  # Whisper-style dynamic range
    return mel.t().contiguous().numpy().astype(np.float32)  # (T, n_mels)


class AudioFrontEnd:
    """Raw audio → the audio input of :class:`EmotionNet` (Whisper tokens or log-mel)."""

    def __init__(self, cfg: ModelConfig, whisper_model: Any = None) -> None:
        self.cfg = cfg
        self._whisper = whisper_model
        self.window = WhisperWindow.parse(cfg.whisper_window)

    @property
    def whisper(self) -> Any:
        if self._whisper is None:  # lazy: only when PCM arrives without frames
            self._whisper = load_whisper_model()
        return self._whisper

    @property
    def dim(self) -> int:
        return self.cfg.whisper_dim if self.cfg.audio_frontend == "whisper" else self.cfg.mel_bins

    def from_frames(self, frames: np.ndarray) -> np.ndarray:
        return whisper_tokens(frames, self.cfg.whisper_pool, self.cfg.audio_max_tokens)

    def from_audio(self, audio: np.ndarray) -> np.ndarray:
        if self.cfg.audio_frontend == "whisper":
            return self.from_frames(whisper_encoder_frames(self.whisper, audio, self.window))
        return log_mel(audio, self.cfg)


class FeatureStore:
    """Cached frozen features per :class:`Sample` (computed on first use).

    Text states are cached per (encoder, layer, text, context); audio per file:
    Whisper frames (fp16, the output of :func:`whisper_encoder_frames`) or log-mel.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        cache_dir: str | Path,
        text_frontend: TextFrontEnd | None = None,
        text_batch: int = 64,
    ) -> None:
        self.cfg = cfg
        self.text_fe = text_frontend
        # int8 text states depend on their batch-mates (dynamic quantisation scales activations
        # per batch): such states are cached per batch size; fp32 ones are batch-invariant
        if text_batch < 1:
            raise ValueError(f"text_batch must be >= 1, got {text_batch}")
        self.text_batch = text_batch
        self.audio_fe = AudioFrontEnd(cfg)
        self.text_cache = NpyCache(cache_dir, "text-states")
        wtag = (
            "whisper-tiny.en"
            if cfg.audio_frontend == "whisper"
            else f"logmel{cfg.mel_bins}-{cfg.mel_max_s}"
        )
        self.audio_tag = wtag
        ns = (
            "whisper-tiny.en-frames" if cfg.audio_frontend == "whisper" else f"logmel{cfg.mel_bins}"
        )
        if cfg.audio_frontend == "whisper" and self.audio_fe.window.spec != "full":
            ns += f"-w{self.audio_fe.window.spec}"  # other windows, other frames
        self.audio_cache = NpyCache(cache_dir, ns)

    def _text_key(self, s: Sample) -> str:
        assert self.text_fe is not None
        tag = self.text_fe.tag
        if tag.endswith("|int8") and self.text_batch != 64:  # 64: what earlier caches used
            tag += f"|b{self.text_batch}"
        return text_key(f"{s.text}\x1f{context_string(s.context, self.cfg.context_turns)}", tag)

    def prefetch_text(
        self, samples: Sequence[Sample], batch_size: int | None = None, progress: bool = True
    ) -> None:
        """Compute and cache text states for all samples that miss the cache."""
        batch_size = batch_size or self.text_batch
        from tqdm import tqdm

        if self.text_fe is None or not self.cfg.uses_text:
            return
        todo: dict[str, Sample] = {}
        for s in samples:
            if s.text and s.text.strip():
                k = self._text_key(s)
                if k not in todo and not self.text_cache.path(k).is_file():
                    todo[k] = s
        items = list(todo.items())
        for i in tqdm(
            range(0, len(items), batch_size), desc="text states", disable=not progress or not items
        ):
            chunk = items[i : i + batch_size]
            feats = self.text_fe.encode(
                [s.text.strip() for _, s in chunk],  # type: ignore[union-attr]
                [context_string(s.context, self.cfg.context_turns) for _, s in chunk],
            )
            for (k, _), f in zip(chunk, feats, strict=True):
                self.text_cache.put(k, f.astype(np.float16))

    def prefetch_audio(self, samples: Sequence[Sample], progress: bool = True) -> None:
        from tqdm import tqdm

        if not self.cfg.uses_audio:
            return
        todo = [
            s
            for s in samples
            if s.audio_path is not None
            and not self.audio_cache.path(file_key(s.audio_path, self.audio_tag)).is_file()
        ]
        for s in tqdm(todo, desc="audio features", disable=not progress or not todo):
            self.audio_cache.put(
                file_key(s.audio_path, self.audio_tag), self._compute_audio(s.audio_path)
            )  # type: ignore[arg-type]

    def _compute_audio(self, path: Path) -> np.ndarray:
        audio = decode_audio(path)
        if not audio_is_usable(audio):
            return np.zeros((0, self.audio_fe.dim), dtype=np.float16)
        if self.cfg.audio_frontend == "whisper":
            return whisper_encoder_frames(
                self.audio_fe.whisper, audio, self.audio_fe.window
            ).astype(np.float16)
        return log_mel(audio, self.cfg).astype(np.float16)

    def text(self, s: Sample) -> np.ndarray | None:
        if not self.cfg.uses_text or not s.text or not s.text.strip():
            return None
        f = self.text_cache.get(self._text_key(s))
        if f is None:
            self.prefetch_text([s], progress=False)
            f = self.text_cache.get(self._text_key(s))
        return None if f is None else f.astype(np.float32)

    def audio(self, s: Sample) -> np.ndarray | None:
        if not self.cfg.uses_audio or s.audio_path is None:
            return None
        k = file_key(s.audio_path, self.audio_tag)
        f = self.audio_cache.get(k)
        if f is None:
            f = self._compute_audio(s.audio_path)
            self.audio_cache.put(k, f)
        if f.shape[0] == 0:
            return None
        f = f.astype(np.float32)
        return self.audio_fe.from_frames(f) if self.cfg.audio_frontend == "whisper" else f
