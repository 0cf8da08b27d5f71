"""Checkpoint folders: only what was trained, plus what is needed to rebuild it.

Layout (``model/checkpoints/default/`` for the shipped one)::

    config.json        model config, text dim, format version, base encoders' identity
    labels.json        the label list, in logit order
    model.safetensors  the trainable network (fp16 or fp32)
    metrics.json       optional: how it was trained and what it scored

The frozen base encoders (MiniLM layers < k, the Whisper encoder) are *not*
stored: they come from their pip packages, named in ``base_encoders``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import CheckpointError, ModelError
from .network import EmotionNet

FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"
WEIGHTS = "model.safetensors"


def base_encoders(cfg: ModelConfig) -> dict[str, str]:
    enc = {}
    if cfg.uses_text:
        enc["text"] = cfg.text_encoder_id
    if cfg.uses_audio:
        enc["audio"] = (
            cfg.audio_encoder_id
            if cfg.audio_frontend == "whisper"
            else "none (log-mel, trained from scratch)"
        )
    return enc


def save_checkpoint(
    net: EmotionNet,
    path: str | Path,
    dtype: torch.dtype = torch.float16,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``net`` as a checkpoint folder; returns the folder."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in net.state_dict().items()
    }
    save_file(state, str(path / WEIGHTS))
    (path / WEIGHTS).chmod(0o644)  # package data must be world-readable
    meta = {
        "format_version": FORMAT_VERSION,
        "model": net.cfg.to_dict(),
        "text_dim": net.text_dim,
        "base_encoders": base_encoders(net.cfg),
        "weights_dtype": str(dtype).replace("torch.", ""),
    }
    (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (path / "labels.json").write_text(json.dumps(list(net.cfg.labels)) + "\n")
    if extra:
        (path / "metrics.json").write_text(json.dumps(extra, indent=2) + "\n")
    return path


def read_checkpoint_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint folder (needs config.json and {WEIGHTS}); "
            "train one with `emomon train` or omit the path to use the shipped one"
        )
    meta = json.loads(cfg_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format_version')} != {FORMAT_VERSION}; upgrade emomon"
        )
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except ModelError as e:
        raise CheckpointError(f"{path}: {e}") from e
    labels_file = path / "labels.json"
    if labels_file.is_file() and tuple(json.loads(labels_file.read_text())) != cfg.labels:
        raise CheckpointError(
            f"{path}: labels.json disagrees with config.json; re-save the checkpoint"
        )
    return cfg, meta


def load_weights(net: EmotionNet, path: str | Path) -> None:
    """Load a checkpoint folder's weights (as fp32) into ``net``, which must match them."""
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / WEIGHTS))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was it written by another emomon version?"
        )


def load_net(path: str | Path, hf_text_config: object | None) -> EmotionNet:
    """Rebuild the network from a checkpoint folder (fp32 on CPU, eval mode)."""
    cfg, meta = read_checkpoint_config(path)
    net = EmotionNet(cfg, int(meta["text_dim"]), hf_text_config)
    load_weights(net, path)
    return net.eval()


def weights_sha(path: str | Path) -> str:
    return hashlib.sha256((Path(path) / WEIGHTS).read_bytes()).hexdigest()
