"""The network: shapes through every variant, joint-vector gradients, ICL loss, missing modalities."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from emomon.model.config import VARIANTS, ModelConfig, variant_config
from emomon.model.errors import ConfigError
from emomon.model.network import EmotionNet, InterClassContrastiveLoss, JointVector
from emomon.model.testing import make_tiny_text_encoder, tiny_config

B, TT, TA, DT = 4, 7, 10, 32


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def hf_config(tiny_encoder):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(tiny_encoder))


def make_batch(cfg: ModelConfig, b: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    text_mask = torch.ones(b, TT, dtype=torch.bool)
    text_mask[0, 4:] = False
    if cfg.audio_frontend == "whisper":
        audio = torch.randn(b, TA, cfg.whisper_dim, generator=g)
        audio_mask = torch.ones(b, TA, dtype=torch.bool)
        audio_mask[1, 6:] = False
    else:
        audio = torch.randn(b, 37, cfg.mel_bins, generator=g)
        audio_mask = torch.ones(b, 37, dtype=torch.bool)
        audio_mask[1, 20:] = False
    return {
        "text": torch.randn(b, TT, DT, generator=g),
        "text_mask": text_mask,
        "audio": audio,
        "audio_mask": audio_mask,
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("frontend", ["whisper", "paper"])
def test_shapes_through_every_variant(variant: str, frontend: str, tiny_encoder, hf_config) -> None:
    cfg = variant_config(variant, tiny_config(tiny_encoder, audio_frontend=frontend))
    net = EmotionNet(cfg, DT, hf_config)
    out = net(**make_batch(cfg))
    assert out.logits.shape == (B, 7)
    expected_f = (DT if cfg.uses_text else 0) + (cfg.audio_dim if cfg.uses_audio else 0)
    assert out.features.shape == (B, expected_f)
    assert torch.isfinite(out.logits).all()


def test_audio_stats_token_adds_one_token(tiny_encoder, hf_config) -> None:
    cfg = tiny_config(tiny_encoder, audio_stats_token=True)
    net = EmotionNet(cfg, DT, hf_config)
    x, m = net.audio_embed(torch.randn(2, TA, cfg.whisper_dim), torch.ones(2, TA, dtype=torch.bool))
    assert x.shape == (2, TA + 1, cfg.audio_dim) and m.shape == (2, TA + 1)
    assert net(**make_batch(cfg)).logits.shape == (B, 7)


def test_variant_table_is_the_papers(tiny_encoder) -> None:
    base = tiny_config(tiny_encoder)
    assert variant_config("wo_jfm", base).fusion == "late"
    assert variant_config("wo_joint", base).joint_mode == "none"
    assert variant_config("wo_icl", base).icl_weight == 0.0
    assert variant_config("cfa", base).fusion == "cfa"
    assert variant_config("concat", base).fusion == "concat"
    assert ModelConfig().num_blocks == 2 and ModelConfig().joint_len == 4  # paper defaults
    with pytest.raises(ConfigError):
        variant_config("nope", base)
    with pytest.raises(ConfigError):
        dataclasses.replace(base, fusion="magic")


def test_gradients_reach_the_joint_vectors(tiny_encoder, hf_config) -> None:
    cfg = tiny_config(tiny_encoder)
    net = EmotionNet(cfg, DT, hf_config)
    out = net(**make_batch(cfg))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    joints = [m for m in net.modules() if isinstance(m, JointVector)]
    assert len(joints) == 2 * cfg.num_blocks  # v_j^l and v'_j^l per block
    for j in joints:
        assert j.tokens.grad is not None and j.tokens.grad.abs().sum() > 0


def test_pretrained_fusion_layers_are_the_language_model_layers(tiny_encoder) -> None:
    from emomon.model.features import TextFrontEnd
    from emomon.model.train import build_net

    cfg = tiny_config(tiny_encoder)
    fe = TextFrontEnd(cfg)
    net = build_net(cfg, fe)
    want = fe.full_layers[cfg.text_feature_layer]
    got = net.blocks[0].ltrans.layer.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def _icl_reference(f: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    f = torch.nn.functional.normalize(f, dim=-1)
    terms = []
    for i in range(len(y)):
        pos = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(torch.exp(f[i] @ f[j] / tau) for j in range(len(y)) if j != i)
        terms.append(-sum(torch.log(torch.exp(f[i] @ f[p] / tau) / denom) for p in pos) / len(pos))
    return torch.stack(terms).mean()


def test_icl_loss_matches_direct_computation() -> None:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    got = InterClassContrastiveLoss(temperature=0.5)(f, y)
    assert torch.allclose(got, _icl_reference(f, y, 0.5), atol=1e-10)


def test_icl_loss_without_positive_pair_is_zero() -> None:
    f = torch.randn(4, 5, requires_grad=True)
    loss = InterClassContrastiveLoss(0.1)(f, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.isfinite(f.grad).all()


def test_missing_modalities_use_absent_tokens_not_inputs(tiny_encoder, hf_config) -> None:
    cfg = tiny_config(tiny_encoder)
    net = EmotionNet(cfg, DT, hf_config).eval()
    batch = make_batch(cfg)
    has_text = torch.tensor([True, False, True, False])
    has_audio = torch.tensor([True, True, False, False])
    out1 = net(**batch, has_text=has_text, has_audio=has_audio)
    # whatever sits in the tensors of an absent modality must not matter
    batch2 = dict(batch, text=batch["text"].clone(), audio=batch["audio"].clone())
    batch2["text"][~has_text] = 99.0
    batch2["audio"][~has_audio] = -99.0
    out2 = net(**batch2, has_text=has_text, has_audio=has_audio)
    assert torch.allclose(out1.logits, out2.logits, atol=1e-5)
    assert torch.isfinite(out1.logits).all()


def test_vtrans_can_start_from_a_local_timm_vit(tiny_encoder, tmp_path) -> None:
    """The paper's pre-trained VTrans: a local timm ViT checkpoint, nothing downloaded."""
    import timm
    from safetensors.torch import save_file

    from emomon.model.features import TextFrontEnd
    from emomon.model.train import build_net

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    weights = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    cfg = tiny_config(
        tiny_encoder,
        audio_frontend="paper",
        audio_dim=192,
        audio_heads=3,
        audio_mlp_ratio=4.0,
        vit_init=f"vit_tiny_patch16_224@{weights}",
    )
    net = build_net(cfg, TextFrontEnd(cfg))
    for i in range(cfg.num_blocks):
        got, want = net.blocks[i].vtrans.block.state_dict(), vit.blocks[i].state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
