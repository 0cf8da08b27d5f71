"""Checkpoint round trip and the EmotionModel interface on a tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emomon.model import CheckpointError, EmotionInput, EmotionModel
from emomon.model.checkpoint import load_net, save_checkpoint
from emomon.model.features import TextFrontEnd
from emomon.model.testing import make_tiny_text_encoder, tiny_config
from emomon.model.train import build_net


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory: pytest.TempPathFactory):
    enc = make_tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"))
    cfg = tiny_config(enc)
    fe = TextFrontEnd(cfg)
    torch.manual_seed(0)
    return build_net(cfg, fe).eval(), fe


def _batch(net):
    g = torch.Generator().manual_seed(3)
    return {
        "text": torch.randn(3, 5, net.text_dim, generator=g),
        "text_mask": torch.ones(3, 5, dtype=torch.bool),
        "audio": torch.randn(3, 8, net.cfg.whisper_dim, generator=g),
        "audio_mask": torch.ones(3, 8, dtype=torch.bool),
    }


def test_round_trip_gives_identical_logits(tiny_net, tmp_path) -> None:
    net, fe = tiny_net
    save_checkpoint(net, tmp_path / "ck32", dtype=torch.float32)
    again = load_net(tmp_path / "ck32", fe.hf_config)
    with torch.inference_mode():
        assert torch.equal(net(**_batch(net)).logits, again(**_batch(net)).logits)
    # fp16 storage (the shipped format): loading twice is deterministic and close to fp32
    save_checkpoint(net, tmp_path / "ck16")
    a, b = load_net(tmp_path / "ck16", fe.hf_config), load_net(tmp_path / "ck16", fe.hf_config)
    with torch.inference_mode():
        la, lb = a(**_batch(net)).logits, b(**_batch(net)).logits
        assert torch.equal(la, lb)
        assert torch.allclose(la, net(**_batch(net)).logits, atol=1e-2)


def test_bad_checkpoint_folder_says_what_to_do(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        EmotionModel.load(tmp_path)


def test_emotion_model_predict_with_missing_modalities(tiny_net, tmp_path) -> None:
    net, _ = tiny_net
    save_checkpoint(net, tmp_path / "ck")
    model = EmotionModel.load(tmp_path / "ck", device="cpu")
    assert model.labels == net.cfg.labels and model.audio_frontend == "whisper"
    assert model.model_id.startswith("emomon-jfm-icl-") and "@" in model.model_id
    frames = np.random.default_rng(0).standard_normal((120, net.cfg.whisper_dim)).astype(np.float32)
    preds = model.predict(
        [
            EmotionInput("i am so happy!", whisper_frames=frames),
            EmotionInput("   ", whisper_frames=frames),  # empty transcript
            EmotionInput("hello", audio=None),  # no audio
            EmotionInput("no", audio=np.zeros(800, dtype=np.float32)),  # too short/silent → absent
            EmotionInput(None),  # nothing at all: the prior, no modality claimed
        ]
    )
    assert [p.modalities for p in preds] == [
        ("text", "audio"),
        ("audio",),
        ("text",),
        ("text",),
        (),
    ]
    for p in preds:
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-5
        assert set(p.probabilities) == set(model.labels)
        assert p.confidence == max(p.probabilities.values()) and p.label in model.labels
    # batching does not change the answer (fp32 exactly; int8 dynamic quantisation
    # scales activations per batch, so only approximately)
    assert model.quantized  # "auto" on CPU
    single = model.predict([EmotionInput("i am so happy!", whisper_frames=frames)])[0]
    assert abs(single.confidence - preds[0].confidence) < 1e-2
    fp32 = EmotionModel.load(tmp_path / "ck", device="cpu", quantize="none")
    batch = [EmotionInput("i am so happy!", whisper_frames=frames), EmotionInput("hello there")]
    together = fp32.predict(batch)
    alone = [fp32.predict([x])[0] for x in batch]
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label and abs(a.confidence - b.confidence) < 1e-5


def test_text_only_network_with_the_audio_expert_reads_raw_audio(tmp_path) -> None:
    """A text-only utterance network (e.g. a larger text encoder, trained with ``--variant
    text_only``) next to the shipped audio expert and gate: PCM without precomputed frames
    makes the expert compute its own Whisper frames (it once asserted on the missing audio
    front-end)."""
    import shutil

    from emomon.model.checkpoint import DEFAULT_CHECKPOINT

    enc = make_tiny_text_encoder(tmp_path / "tiny-bert")
    cfg = tiny_config(enc, modalities=("text",))
    torch.manual_seed(0)
    save_checkpoint(build_net(cfg, TextFrontEnd(cfg)).eval(), tmp_path / "ck")
    for name in ("audio_expert.json", "audio_expert.safetensors", "gate.json"):
        shutil.copy(DEFAULT_CHECKPOINT / name, tmp_path / "ck" / name)
    model = EmotionModel.load(tmp_path / "ck", context=False)
    assert model.fusion == "gated" and model.audio_fe is None
    t = np.arange(16000 * 2) / 16000
    voice = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    [p] = model.predict([EmotionInput(text="I am fine, thanks.", audio=voice)])
    assert p.modalities == ("text", "audio") and p.audio_weight is not None
    assert abs(sum(p.probabilities.values()) - 1.0) < 1e-4
