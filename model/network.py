"""The joint-vector fusion network with inter-class contrastive learning.

Module names follow the paper's Fig. 1 (sec. 2.2–2.5):

    F_t  = FeatureExtractor(TextEncoder_{<k}(text))                 (sec. 2.2)
    F_m  = AudioEmbed(audio)          mel patches → linear projection | Whisper frames
    JFM  = N × JointFusionBlock(VTrans^l, LTrans^l, JointVector^l, JointVector'^l)  (eqs. 1–4)
    logits = ½ (W_t · CLS(F_{m→t}^N) + W_m · CLS(F_{t→m}^N))        (sec. 2.4, eq. 5)
    L = CE + λ · InterClassContrastiveLoss([CLS_t ⊕ CLS_m])          (eqs. 6–7)

How we read the paper's loose indices (eqs. 1–4). Taken literally, eq. 2 makes
F_{m→t}^{l+1} the output of the *language* layer fed with F_{t→m}^l, while eq. 1
feeds F_{m→t}^l to the *vision* layer, so each stream would change feature space
every block. The evident intent, which we implement, is one stream per space:

* the text-space stream ``x_t`` (F_{m→t}: text tokens that received audio) and
* the audio-space stream ``x_m`` (F_{t→m}: audio tokens that received text),
  with x_t^0 = F_t and x_m^0 = F_m.

Block l then computes

    (·, v̂)    = VTrans^l(x_m^l ⊕ v^l)          eq. 1: joint tokens gather audio
    x_t^{l+1} = LTrans^l(x_t^l ⊕ MLP(v̂))[:T]  eq. 2: text reads J audio tokens only
    (·, v̂')   = LTrans^l(x_t^l ⊕ v'^l)         eq. 3: LTrans' shares LTrans's weights
    x_m^{l+1} = VTrans^l(x_m^l ⊕ MLP'(v̂'))[:M] eq. 4: VTrans' shares VTrans's weights

so information crosses between the modalities only through the J joint tokens.
The outputs at the joint positions (V_j^l, V_j'^l in the paper) are discarded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import ConfigError


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) bool keep-mask → (B, 1, 1, T) additive attention mask."""
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


class TransformerBlock(nn.Module):
    """A pre-norm ViT block (timm's ``Block``) with a padding mask.

    Used as the text feature extractor, as VTrans^l, and as the late-fusion audio
    encoder; timm so that a pre-trained timm ViT can initialise it.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.block = Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x, attn_mask=additive_mask(mask, x.dtype))  # (B, T, D)


class LanguageLayer(nn.Module):
    """LTrans^l: one layer of the pre-trained language transformer (BERT/RoBERTa family).

    Wraps the Hugging Face layer so callers pass a bool padding mask.
    """

    def __init__(self, hf_layer: nn.Module) -> None:
        super().__init__()
        self.layer = hf_layer

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.layer(x, attention_mask=additive_mask(mask, x.dtype))
        return out[0] if isinstance(out, tuple) else out  # (B, T, Dt)


def build_language_layers(cfg: ModelConfig, hf_config: Any, text_dim: int) -> nn.ModuleList:
    """LTrans^1..N: copies of the encoder's layers k..k+N-1 (weights loaded later).

    With ``text_pretrained_fusion_layers=False`` (or an encoder that is not
    BERT-like) fresh :class:`TransformerBlock`s are used instead.
    """
    if cfg.text_pretrained_fusion_layers and hf_config is not None:
        from transformers import AutoModel

        # only the layers' shapes matter (weights come from the LM or the checkpoint):
        # a skeleton with a tiny vocabulary keeps loading fast
        small = copy.deepcopy(hf_config)
        small.vocab_size = 8
        small.num_hidden_layers = max(
            getattr(hf_config, "num_hidden_layers", 0), cfg.text_feature_layer + cfg.num_blocks
        )
        skeleton = AutoModel.from_config(small)
        layers = getattr(getattr(skeleton, "encoder", None), "layer", None)
        if layers is None:
            raise ConfigError(
                "text encoder has no .encoder.layer (not BERT/RoBERTa-like); "
                "set text_pretrained_fusion_layers=false"
            )
        k = cfg.text_feature_layer
        if k + cfg.num_blocks > len(layers):
            raise ConfigError(
                f"text_feature_layer ({k}) + num_blocks ({cfg.num_blocks}) exceeds the "
                f"encoder's {len(layers)} layers; lower text_feature_layer"
            )
        return nn.ModuleList(
            LanguageLayer(copy.deepcopy(layers[k + i])) for i in range(cfg.num_blocks)
        )
    heads = cfg.extractor_heads
    return nn.ModuleList(
        TransformerBlock(text_dim, heads, cfg.extractor_mlp_ratio, cfg.dropout)
        for _ in range(cfg.num_blocks)
    )


class JointVector(nn.Module):
    """A trainable joint vector v_j^l of ``length`` tokens (sec. 2.3).

    Initialised like prompt tokens (truncated normal, std 0.02), as in ref. [10].
    """

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(nn.init.trunc_normal_(torch.empty(length, dim), std=0.02))

    def forward(self, batch: int) -> torch.Tensor:
        return self.tokens.unsqueeze(0).expand(batch, -1, -1)  # (B, J, D)


class JointMLP(nn.Module):
    """The MLP that maps joint tokens between the two feature spaces (v̄ = MLP(v̂))."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out)
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v)  # (B, J, d_out)


def _with_tokens(
    x: torch.Tensor, mask: torch.Tensor, extra: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ⊕ extra along the token axis, extending the padding mask."""
    ones = torch.ones(extra.shape[:2], dtype=torch.bool, device=mask.device)
    return torch.cat([x, extra], dim=1), torch.cat([mask, ones], dim=1)


class JointFusionBlock(nn.Module):
    """One JF block (eqs. 1–4); see the module docstring for the index reading.

    ``joint_mode='none'`` (ablation "w/o v_j") keeps VTrans^l / LTrans^l but appends
    no joint tokens, so the streams no longer exchange information.
    """

    def __init__(self, cfg: ModelConfig, ltrans: nn.Module, text_dim: int) -> None:
        super().__init__()
        da = cfg.audio_dim
        self.ltrans = ltrans
        self.vtrans = TransformerBlock(da, cfg.audio_heads, cfg.audio_mlp_ratio, cfg.dropout)
        self.learned = cfg.joint_mode == "learned"
        if self.learned:
            self.joint_m = JointVector(cfg.joint_len, da)  # v_j^l   (audio side, eq. 1)
            self.joint_t = JointVector(cfg.joint_len, text_dim)  # v'_j^l  (text side, eq. 3)
            self.mlp_m2t = JointMLP(da, text_dim)  # eq. 2's MLP
            self.mlp_t2m = JointMLP(text_dim, da)  # eq. 4's MLP
        self.j = cfg.joint_len

    def forward(
        self, x_t: torch.Tensor, m_t: torch.Tensor, x_m: torch.Tensor, m_m: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.learned:
            return self.ltrans(x_t, m_t), self.vtrans(x_m, m_m)
        b, tt, tm, j = x_t.shape[0], x_t.shape[1], x_m.shape[1], self.j
        v_hat = self.vtrans(*_with_tokens(x_m, m_m, self.joint_m(b)))[:, tm:]  # eq. 1  (B, J, Da)
        v_bar = self.mlp_m2t(v_hat)  # (B, J, Dt)
        x_t_next = self.ltrans(*_with_tokens(x_t, m_t, v_bar))[:, :tt]  # eq. 2  (B, Tt, Dt)
        v_hat_p = self.ltrans(*_with_tokens(x_t, m_t, self.joint_t(b)))[:, tt:]  # eq. 3  (B, J, Dt)
        v_bar_p = self.mlp_t2m(v_hat_p)  # (B, J, Da)
        x_m_next = self.vtrans(*_with_tokens(x_m, m_m, v_bar_p))[:, :tm]  # eq. 4  (B, Tm, Da)
        assert v_hat.shape[1] == j and x_t_next.shape == x_t.shape and x_m_next.shape == x_m.shape
        return x_t_next, x_m_next


class CrossFusionAttentionBlock(nn.Module):
    """CFA (Table 3): unimodal layers, then each stream cross-attends to the other."""

    def __init__(self, cfg: ModelConfig, ltrans: nn.Module, text_dim: int) -> None:
        super().__init__()
        da, heads = cfg.audio_dim, cfg.audio_heads
        self.ltrans = ltrans
        self.vtrans = TransformerBlock(da, heads, cfg.audio_mlp_ratio, cfg.dropout)
        self.norm_t, self.norm_m = nn.LayerNorm(text_dim), nn.LayerNorm(da)
        self.t_from_m = nn.MultiheadAttention(text_dim, heads, kdim=da, vdim=da, batch_first=True)
        self.m_from_t = nn.MultiheadAttention(
            da, heads, kdim=text_dim, vdim=text_dim, batch_first=True
        )

    def forward(
        self, x_t: torch.Tensor, m_t: torch.Tensor, x_m: torch.Tensor, m_m: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_t, x_m = self.ltrans(x_t, m_t), self.vtrans(x_m, m_m)
        q_t, q_m = self.norm_t(x_t), self.norm_m(x_m)
        a_t, _ = self.t_from_m(
            q_t, q_m, q_m, key_padding_mask=~m_m, need_weights=False
        )  # (B, Tt, Dt)
        a_m, _ = self.m_from_t(
            q_m, q_t, q_t, key_padding_mask=~m_t, need_weights=False
        )  # (B, Tm, Da)
        return x_t + a_t, x_m + a_m


class UnimodalBlock(nn.Module):
    """Late fusion / concatenation / single modality: the layers without any exchange."""

    def __init__(self, cfg: ModelConfig, ltrans: nn.Module | None, text_dim: int) -> None:
        super().__init__()
        self.ltrans = ltrans if ltrans is not None else nn.Identity()
        self.vtrans = (
            TransformerBlock(cfg.audio_dim, cfg.audio_heads, cfg.audio_mlp_ratio, cfg.dropout)
            if cfg.uses_audio
            else nn.Identity()
        )

    def forward(
        self,
        x_t: torch.Tensor | None,
        m_t: torch.Tensor | None,
        x_m: torch.Tensor | None,
        m_m: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if x_t is not None and not isinstance(self.ltrans, nn.Identity):
            x_t = self.ltrans(x_t, m_t)
        if x_m is not None and not isinstance(self.vtrans, nn.Identity):
            x_m = self.vtrans(x_m, m_m)
        return x_t, x_m


class FeatureExtractor(nn.Module):
    """The 2-block transformer on top of the frozen text encoder (sec. 2.2)."""

    def __init__(self, cfg: ModelConfig, text_dim: int) -> None:
        super().__init__()
        if text_dim % cfg.extractor_heads:
            raise ConfigError(
                f"text dim {text_dim} not divisible by extractor_heads {cfg.extractor_heads}"
            )
        self.blocks = nn.ModuleList(
            TransformerBlock(text_dim, cfg.extractor_heads, cfg.extractor_mlp_ratio, cfg.dropout)
            for _ in range(cfg.extractor_layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, mask)
        return x  # (B, T, Dt)


class WhisperFrameEmbed(nn.Module):
    """Audio tokens from frozen Whisper-encoder frames: linear projection (pooling is
    done beforehand by :func:`emomon.model.features.whisper_tokens`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(cfg.whisper_dim), nn.Linear(cfg.whisper_dim, cfg.audio_dim)
        )
        # Optional utterance-statistics token: mean+std pooled Whisper features are a
        # strong speaker-independent emotion cue (MODEL.md sec. 5), cheap to give the model.
        self.stats: nn.Module | None = (
            nn.Sequential(
                nn.LayerNorm(2 * cfg.whisper_dim), nn.Linear(2 * cfg.whisper_dim, cfg.audio_dim)
            )
            if cfg.audio_stats_token
            else None
        )

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(feats)  # (B, T, Da)
        if self.stats is None:
            return x, mask
        s = self.stats(masked_mean_std(feats, mask)).unsqueeze(1)  # (B, 1, Da)
        return torch.cat([s, x], 1), torch.cat([mask.any(1, keepdim=True), mask], 1)


def masked_mean_std(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) tokens and a (B, T) keep-mask → (B, 2D) mean ⊕ std over the kept tokens."""
    w = mask.unsqueeze(-1).to(feats.dtype)  # (B, T, 1)
    n = w.sum(1).clamp_min(1.0)
    mean = (feats * w).sum(1) / n  # (B, D)
    std = (((feats - mean[:, None]) ** 2 * w).sum(1) / n).clamp_min(1e-6).sqrt()
    return torch.cat([mean, std], -1)


class MelPatchEmbed(nn.Module):
    """The paper's front-end: 80-bin log-mel → (freq × time) patches → linear projection.

    A strided convolution is exactly ViT's per-patch linear projection.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        pf, pt = cfg.mel_patch
        if cfg.mel_bins % pf:
            raise ConfigError("mel_bins must be a multiple of the patch's frequency size")
        self.pt = pt
        self.proj = nn.Conv2d(1, cfg.audio_dim, kernel_size=(pf, pt), stride=(pf, pt))

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # mel: (B, T, n_mels) frames; mask: (B, T) valid frames
        b, t, _ = mel.shape
        t_pad = (-t) % self.pt
        mel = F.pad(mel, (0, 0, 0, t_pad))
        mask = F.pad(mask, (0, t_pad))
        x = self.proj(mel.transpose(1, 2).unsqueeze(1))  # (B, Da, F', T')
        x = x.flatten(2).transpose(1, 2)  # (B, F'·T', Da), frequency-major
        tm = mask.view(b, -1, self.pt).any(-1)  # (B, T')
        fpatches = x.shape[1] // tm.shape[1]
        return x, tm.repeat(1, fpatches)


@dataclass
class NetOutput:
    """What the network returns; ``features`` is eq. 6's F (for the ICL loss)."""

    logits: torch.Tensor  # (B, C)
    features: torch.Tensor  # (B, D_F)
    head_logits: tuple[torch.Tensor, ...] = ()  # each classifier's own logits (aux losses)


class EmotionNet(nn.Module):
    """The trainable network. Frozen encoders (text layers < k, the Whisper encoder)
    run outside it, so training can use cached features.

    Inputs (one batch):
        text: (B, Tt, Dt) hidden states of the text encoder's layer k; text_mask (B, Tt)
        audio: (B, Ta, Dw) Whisper tokens or (B, Tf, 80) log-mel frames; audio_mask (B, Ta)
        has_text / has_audio: (B,) bool — a missing modality is replaced by a learned
        "absent" token (never by fabricated input).
    """

    def __init__(
        self, cfg: ModelConfig, text_dim: int, hf_text_config: object | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_dim = text_dim
        dt, da, c = text_dim, cfg.audio_dim, len(cfg.labels)
        self.use_t, self.use_m = cfg.uses_text, cfg.uses_audio
        # text branch
        self.extractor = FeatureExtractor(cfg, dt) if self.use_t else nn.Identity()
        self.absent_text = nn.Parameter(torch.zeros(dt)) if self.use_t else None
        # audio branch
        if self.use_m:
            self.audio_embed: nn.Module = (
                WhisperFrameEmbed(cfg) if cfg.audio_frontend == "whisper" else MelPatchEmbed(cfg)
            )
            n_pos = self._max_audio_tokens() + 1
            self.audio_cls = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, da), std=0.02))
            self.audio_pos = nn.Parameter(
                nn.init.trunc_normal_(torch.empty(1, n_pos, da), std=0.02)
            )
            self.absent_audio = nn.Parameter(torch.zeros(da))
        else:
            self.audio_embed = nn.Identity()
        # fusion (JFM and its ablations)
        both = self.use_t and self.use_m
        # a single modality has nothing to fuse: its layers run alone ("unimodal")
        fusion = cfg.fusion if both else "unimodal"
        blocks: list[nn.Module] = []
        if fusion == "late":
            # w/o JFM: no pre-trained fusion layers; a separate ViT encodes audio (Table 2)
            for _ in range(cfg.num_blocks):
                blocks.append(UnimodalBlock(cfg, None, dt))
        else:
            ltrans: list[Any] = (
                list(build_language_layers(cfg, hf_text_config, dt))
                if self.use_t
                else [None] * cfg.num_blocks
            )
            for lt in ltrans:
                if fusion == "jfm":
                    blocks.append(JointFusionBlock(cfg, lt, dt))
                elif fusion == "cfa":
                    blocks.append(CrossFusionAttentionBlock(cfg, lt, dt))
                else:  # concat, unimodal
                    blocks.append(UnimodalBlock(cfg, lt, dt))
        self.blocks = nn.ModuleList(blocks)
        self.fusion = fusion
        self.norm_t = nn.LayerNorm(dt) if self.use_t else nn.Identity()
        self.norm_m = nn.LayerNorm(da) if self.use_m else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        # classifiers (sec. 2.4): two linear heads with averaged logits, or one on the concatenation
        if fusion == "concat":
            self.head_cat: nn.Module = nn.Linear(dt + da, c)
            self.head_t: nn.Module = nn.Identity()
            self.head_m: nn.Module = nn.Identity()
        else:
            self.head_cat = nn.Identity()
            self.head_t = nn.Linear(dt, c) if self.use_t else nn.Identity()
            self.head_m = nn.Linear(da, c) if self.use_m else nn.Identity()
        # optional third head: a linear probe on the utterance's Whisper mean ⊕ std
        self.head_stats: nn.Module | None = None
        if self.use_m and cfg.audio_stats_head:
            dw = 2 * cfg.whisper_dim
            self.head_stats = nn.Sequential(
                nn.LayerNorm(dw), nn.Dropout(cfg.dropout), nn.Linear(dw, c)
            )

    def _max_audio_tokens(self) -> int:
        cfg = self.cfg
        if cfg.audio_frontend == "whisper":
            return cfg.audio_max_tokens + int(cfg.audio_stats_token)
        pf, pt = cfg.mel_patch
        frames = int(cfg.mel_max_s * 100)
        return (cfg.mel_bins // pf) * ((frames + pt - 1) // pt)

    # -------------------------------------------------------------------- forward
    def _text_stream(
        self, text: torch.Tensor, mask: torch.Tensor, has: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.extractor(text, mask)  # F_t (B, Tt, Dt)
        assert self.absent_text is not None
        absent = self.absent_text.to(x.dtype).expand_as(x)
        first = torch.zeros_like(mask)
        first[:, 0] = True
        x = torch.where(has[:, None, None], x, absent)
        mask = torch.where(has[:, None], mask, first)
        return x, mask

    def _audio_stream(
        self, audio: torch.Tensor, mask: torch.Tensor, has: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.audio_embed(audio, mask)  # F_m (B, Ta, Da)
        if x.shape[1] + 1 > self.audio_pos.shape[1]:
            raise ConfigError(
                f"{x.shape[1]} audio tokens exceed audio_max_tokens; cap them in the front-end"
            )
        b = x.shape[0]
        absent = self.absent_audio.to(x.dtype).expand_as(x)
        first = torch.zeros_like(mask)
        first[:, 0] = True
        x = torch.where(has[:, None, None], x, absent)
        mask = torch.where(has[:, None], mask, first)
        x = (
            torch.cat([self.audio_cls.expand(b, -1, -1), x], dim=1)
            + self.audio_pos[:, : x.shape[1] + 1]
        )
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], dim=1)
        return x, mask  # (B, 1+Ta, Da): CLS first

    def forward_features(
        self,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
        has_audio: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """CLS features of the text-space and audio-space streams after N blocks."""
        x_t = m_t = x_m = m_m = None
        if self.use_t:
            assert text is not None and text_mask is not None
            has = has_text if has_text is not None else text_mask.any(1)
            x_t, m_t = self._text_stream(text, text_mask, has)
        if self.use_m:
            assert audio is not None and audio_mask is not None
            has = has_audio if has_audio is not None else audio_mask.any(1)
            x_m, m_m = self._audio_stream(audio, audio_mask, has)
        for blk in self.blocks:
            x_t, x_m = blk(x_t, m_t, x_m, m_m)
        cls_t = None
        if x_t is not None:
            if self.cfg.text_pool == "mean":  # masked mean over the text stream's tokens
                assert m_t is not None
                w = m_t.unsqueeze(-1).to(x_t.dtype)  # (B, Tt, 1)
                cls_t = self.norm_t((x_t * w).sum(1) / w.sum(1).clamp_min(1.0))  # (B, Dt)
            else:
                cls_t = self.norm_t(x_t[:, 0])  # CLS (sec. 2.4)  (B, Dt)
        cls_m = self.norm_m(x_m[:, 0]) if x_m is not None else None  # (B, Da)
        return cls_t, cls_m

    def forward_head(
        self,
        cls_t: torch.Tensor | None,
        cls_m: torch.Tensor | None,
        stats_logits: torch.Tensor | None = None,
        has_stats: torch.Tensor | None = None,
    ) -> NetOutput:
        """Logits from the CLS features; ``stats_logits`` (B, C) of the optional audio-stats
        head join the average only where ``has_stats`` (B,) is true (audio present)."""
        feats = torch.cat([f for f in (cls_t, cls_m) if f is not None], dim=-1)  # eq. 6 (B, D_F)
        parts: list[torch.Tensor] = []
        if self.fusion == "concat":
            logits = self.head_cat(self.drop(feats))
            parts.append(logits)
        else:
            if cls_t is not None:
                parts.append(self.head_t(self.drop(cls_t)))
            if cls_m is not None:
                parts.append(self.head_m(self.drop(cls_m)))
            logits = torch.stack(parts).mean(0)  # averaged logits (sec. 2.4)
        if stats_logits is not None:
            assert has_stats is not None
            w = has_stats.to(logits.dtype)[:, None]  # (B, 1)
            n = float(len(parts) if self.fusion != "concat" else 1)
            logits = (logits * n + w * stats_logits) / (n + w)
            parts.append(stats_logits)
        return NetOutput(logits=logits, features=feats, head_logits=tuple(parts))

    def _stats_logits(
        self,
        audio: torch.Tensor | None,
        audio_mask: torch.Tensor | None,
        has_audio: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.head_stats is None or audio is None or audio_mask is None:
            return None, None
        has = has_audio if has_audio is not None else audio_mask.any(1)
        has = has & audio_mask.any(1)
        return self.head_stats(masked_mean_std(audio, audio_mask)), has  # (B, C), (B,)

    def forward(self, **batch: torch.Tensor) -> NetOutput:
        s, has = self._stats_logits(
            batch.get("audio"), batch.get("audio_mask"), batch.get("has_audio")
        )
        return self.forward_head(*self.forward_features(**batch), stats_logits=s, has_stats=has)


class InterClassContrastiveLoss(nn.Module):
    """Eq. 7: supervised contrastive loss (Khosla et al.) over the batch.

    For anchor i, positives P(i) are the other samples with the same label and the
    denominator runs over all j ≠ i. We L2-normalise F (as Khosla et al. do; eq. 7
    writes a raw dot product, which leaves τ without a fixed scale) and average over
    the anchors that have at least one positive (eq. 7 sums; the mean keeps λ
    independent of batch size). A batch with no positive pair gives exactly 0.
    """

    def __init__(self, temperature: float = 0.1, normalize: bool = True) -> None:
        super().__init__()
        self.tau = temperature
        self.normalize = normalize

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        f = F.normalize(feats, dim=-1) if self.normalize else feats  # (K, D)
        k = f.shape[0]
        sim = f @ f.t() / self.tau  # (K, K)
        eye = torch.eye(k, dtype=torch.bool, device=f.device)
        sim = sim.masked_fill(eye, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # log softmax over j ≠ i
        pos = (labels[:, None] == labels[None, :]) & ~eye  # P(i)
        n_pos = pos.sum(1)
        anchors = n_pos > 0
        if not bool(anchors.any()):
            return feats.sum() * 0.0  # keeps the graph, no NaN
        per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[anchors] / n_pos[anchors])
        return per_anchor.mean()
