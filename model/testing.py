"""Tiny, offline stand-ins for tests: a 3-layer BERT text encoder and a tiny config.

Used by emomon's own unit tests (and usable by other packages' tests) so that the
whole network can be exercised in milliseconds with nothing downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import ModelConfig

_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz.,!?'")
    + [
        "i",
        "you",
        "the",
        "is",
        "am",
        "so",
        "happy",
        "sad",
        "angry",
        "hello",
        "what",
        "no",
        "yes",
        "great",
        "door",
    ]
)


def make_tiny_text_encoder(folder: str | Path, hidden: int = 32, layers: int = 3) -> Path:
    """Write a randomly initialised tiny BERT + WordPiece tokenizer to ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(_VOCAB) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(_VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(str(folder))
    return folder


def tiny_config(text_encoder: str | Path, **overrides: Any) -> ModelConfig:
    """A config small enough for unit tests (paper structure, toy widths)."""
    base = ModelConfig(
        text_encoder=str(text_encoder),
        text_encoder_id="tiny-random-bert",
        text_feature_layer=1,
        extractor_heads=4,
        extractor_mlp_ratio=2.0,
        audio_dim=16,
        audio_heads=2,
        audio_mlp_ratio=2.0,
        whisper_dim=24,
        audio_max_tokens=16,
        mel_bins=16,
        mel_patch=(8, 4),
        mel_max_s=1.0,
        text_max_tokens=24,
    )
    return dataclasses.replace(base, **overrides)
