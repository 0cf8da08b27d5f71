"""Training features: lr schedule, audio time masking, the audio-stats head, aux head losses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emomon.model.errors import ConfigError
from emomon.model.features import TextFrontEnd
from emomon.model.network import EmotionNet
from emomon.model.testing import make_tiny_text_encoder, tiny_config
from emomon.model.train import Encoded, TrainConfig, collate, lr_factor, time_mask, train


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert-train"))


def test_constant_schedule_is_flat() -> None:
    tc = TrainConfig()
    assert [lr_factor(tc, p) for p in (0.0, 0.3, 1.0)] == [1.0, 1.0, 1.0]


def test_cosine_schedule_warms_up_then_decays() -> None:
    tc = TrainConfig(lr_schedule="cosine", warmup_frac=0.1, lr_min_ratio=0.05)
    assert lr_factor(tc, 0.0) < 0.01
    assert lr_factor(tc, 0.05) == pytest.approx(0.5)
    assert lr_factor(tc, 0.1) == pytest.approx(1.0)
    mid = lr_factor(tc, 0.55)
    assert mid == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(tc, 1.0) == pytest.approx(0.05)
    xs = [lr_factor(tc, p) for p in np.linspace(0.1, 1.0, 20)]
    assert all(a >= b for a, b in zip(xs, xs[1:], strict=False))  # monotone decay


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ConfigError):
        lr_factor(TrainConfig(lr_schedule="step"), 0.5)


def test_time_mask_hides_one_span_and_keeps_a_token() -> None:
    rng = np.random.default_rng(0)
    mask = torch.ones(50, 20, dtype=torch.bool)
    mask[1, 3:] = False  # 3 valid tokens
    mask[2, 1:] = False  # 1 valid token: never masked
    out = time_mask(mask, 0.5, rng)
    assert not bool((out & ~mask).any())  # padding never becomes valid
    assert bool(out.any(1).all())  # every row keeps at least one token
    assert bool(out[2, 0])
    hidden = (mask & ~out).sum(1)
    assert int(hidden.max()) <= 10 and int(hidden.sum()) > 0
    for row in (mask & ~out)[hidden > 0]:  # one contiguous span
        idx = row.nonzero().flatten()
        assert int(idx[-1] - idx[0] + 1) == len(idx)
    assert torch.equal(time_mask(mask, 0.0, rng), mask)


def test_collate_time_mask_keeps_has_audio(tiny_encoder) -> None:
    cfg = tiny_config(tiny_encoder)
    items = [
        Encoded(None, np.ones((8, cfg.whisper_dim), np.float16), 0, "x"),
        Encoded(np.ones((3, 32), np.float16), None, 1, "y"),
    ]
    b = collate(items, 32, cfg.whisper_dim, cfg, None, 0.9, np.random.default_rng(1))
    assert b["has_audio"].tolist() == [True, False]
    assert 1 <= int(b["audio_mask"][0].sum()) <= 8


def test_audio_stats_head_joins_only_samples_with_audio(tiny_encoder) -> None:
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(str(tiny_encoder))
    cfg = tiny_config(tiny_encoder, audio_stats_head=True)
    net = EmotionNet(cfg, 32, hf).eval()
    g = torch.Generator().manual_seed(0)
    audio_mask = torch.ones(2, 6, dtype=torch.bool)
    audio_mask[1] = False  # second sample: no audio
    batch = {
        "text": torch.randn(2, 5, 32, generator=g),
        "text_mask": torch.ones(2, 5, dtype=torch.bool),
        "audio": torch.randn(2, 6, cfg.whisper_dim, generator=g),
        "audio_mask": audio_mask,
    }
    with torch.no_grad():
        out = net(**batch)
        base = net.forward_head(*net.forward_features(**batch))
    assert len(out.head_logits) == 3
    # without audio the stats head must not change the answer
    assert torch.allclose(out.logits[1], base.logits[1])
    # with audio: the mean of the three heads
    assert torch.allclose(out.logits[0], torch.stack([h[0] for h in out.head_logits]).mean(0))
    with pytest.raises(ConfigError):
        tiny_config(tiny_encoder, audio_stats_head=True, audio_frontend="paper")


def test_train_runs_with_the_new_options(tiny_encoder, tmp_path) -> None:
    cfg = tiny_config(tiny_encoder, audio_stats_head=True, audio_stats_token=True)
    fe = TextFrontEnd(cfg)
    rng = np.random.default_rng(0)

    def sample(i: int) -> Encoded:
        audio = i % 2 == 0
        return Encoded(
            fe.encode(["i am so happy" if i % 3 else "no"])[0].astype(np.float16),
            rng.standard_normal((9, cfg.whisper_dim)).astype(np.float16) if audio else None,
            i % 3,
            "a" if audio else "t",
        )

    data = [sample(i) for i in range(24)]
    tc = TrainConfig(
        epochs=2,
        batch_size=8,
        lr=1e-3,
        lr_schedule="cosine",
        warmup_frac=0.2,
        audio_time_mask=0.3,
        aux_head_weight=0.5,
        audio_repeat=2,
    )
    state = train(cfg, tc, data, data[:8], fe, tmp_path / "run", progress=False)
    assert state["epoch"] == 2 and np.isfinite(state["history"][-1]["train_ce"])
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    # resuming a finished run does no more work and keeps the state
    again = train(cfg, tc, data, data[:8], fe, tmp_path / "run", progress=False)
    assert again["epoch"] == 2
    assert dataclasses.asdict(tc)["lr_schedule"] == "cosine"


def test_init_from_starts_at_the_checkpoint_and_must_beat_it(tiny_encoder, tmp_path) -> None:
    from emomon.model.errors import CheckpointError

    cfg = tiny_config(tiny_encoder)
    fe = TextFrontEnd(cfg)
    data = [
        Encoded(fe.encode([t])[0].astype(np.float16), None, i % 3, "t")
        for i, t in enumerate(["yes", "no", "maybe"] * 4)
    ]
    tc = TrainConfig(epochs=1, batch_size=4, lr=1e-3)
    first = train(cfg, tc, data, data, fe, tmp_path / "a", progress=False)
    src = str(tmp_path / "a" / "best_fp32")
    # lr 0: the weights cannot move, so the dev score stays the checkpoint's own, which is the
    # bar: no epoch beats it and best/ is not written.
    frozen = dataclasses.replace(tc, lr=0.0, lr_pretrained=0.0, init_from=src)
    state = train(cfg, frozen, data, data, fe, tmp_path / "b", progress=False)
    assert state["init_dev_score"] == pytest.approx(first["best"])
    assert state["history"][-1]["dev_score"] == pytest.approx(first["best"])
    assert state["bad_epochs"] == 1 and not (tmp_path / "b" / "best").exists()
    # a checkpoint of another architecture is refused, naming the field
    other = dataclasses.replace(cfg, joint_len=cfg.joint_len + 1)
    with pytest.raises(CheckpointError, match="joint_len"):
        train(other, frozen, data, data, TextFrontEnd(other), tmp_path / "c", progress=False)


def test_train_only_adapts_the_audio_side_and_keeps_the_text_path_bit_identical(
    tiny_encoder, tmp_path
) -> None:
    """--train-only audio_embed,head_stats (adapting a checkpoint to other Whisper frames):
    those weights move, every other weight, and so every text-only answer, stays as it was."""
    from safetensors.torch import load_file

    from emomon.model.checkpoint import load_net
    from emomon.model.errors import ConfigError as CfgError
    from emomon.model.train import build_net, freeze_except

    cfg = tiny_config(tiny_encoder, audio_stats_head=True, audio_stats_token=True)
    fe = TextFrontEnd(cfg)
    rng = np.random.default_rng(1)
    text = [fe.encode([t])[0].astype(np.float16) for t in ("i am so happy", "no", "what")]
    data = [
        Encoded(
            text[i % 3], rng.standard_normal((9, cfg.whisper_dim)).astype(np.float16), i % 3, "a"
        )
        for i in range(24)
    ]
    tc = TrainConfig(epochs=1, batch_size=8, lr=1e-3)
    train(cfg, tc, data, data[:8], fe, tmp_path / "a", progress=False)
    src = tmp_path / "a" / "best_fp32"
    adapted_cfg = dataclasses.replace(cfg, whisper_window="10+8")  # new frames, same network
    tc2 = dataclasses.replace(
        tc, epochs=2, lr=1e-2, init_from=str(src), train_only="audio_embed,head_stats"
    )
    state = train(adapted_cfg, tc2, data, data[:8], fe, tmp_path / "b", progress=False)
    assert state["epoch"] == 2
    before = load_file(src / "model.safetensors")
    after = torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=False)["net"]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("audio_embed.", "head_stats.")) for k in moved), moved
    # text-only answers before and after are identical
    nets = [load_net(src, fe.hf_config).eval(), build_net(adapted_cfg, fe)]
    nets[1].load_state_dict(after)
    nets[1].eval()
    from emomon.model.features import pad_sequences

    t, tm = pad_sequences([text[0].astype(np.float32)], text[0].shape[1])
    au, am = pad_sequences([None], cfg.whisper_dim)  # no audio: the learned "absent" token
    batch = {"text": t, "text_mask": tm, "audio": au, "audio_mask": am}
    with torch.no_grad():
        a, b = (n(**batch).logits for n in nets)
    assert torch.equal(a, b)
    with pytest.raises(CfgError, match="no parameter"):
        freeze_except(nets[0], "nonexistent_module")


def test_average_last_epochs_is_the_mean_and_kept_only_if_better_on_dev(
    tiny_encoder, tmp_path
) -> None:
    from safetensors.torch import load_file

    cfg = tiny_config(tiny_encoder)
    fe = TextFrontEnd(cfg)
    data = [
        Encoded(fe.encode([t])[0].astype(np.float16), None, i % 3, "t")
        for i, t in enumerate(["i am so happy", "no", "what is the door"] * 6)
    ]
    tc = TrainConfig(epochs=3, batch_size=6, lr=1e-3, average_last=2, patience=3)
    state = train(cfg, tc, data, data, fe, tmp_path / "run", progress=False)
    avg = state["averaged"]
    assert avg["epochs"] == [2, 3]
    singles = [h["dev_score"] for h in state["history"]]
    assert state["best"] == max([*singles, avg["dev_score"]])
    ck = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    snaps = ck["snapshots"]
    assert len(snaps) == 2 and ck["state"]["averaged"] == avg
    best = load_file(tmp_path / "run" / "best_fp32" / "model.safetensors")
    name = next(n for n in snaps[0] if not torch.equal(snaps[0][n], snaps[1][n]))
    mean = (snaps[0][name] + snaps[1][name]) / 2
    if avg["dev_score"] > max(singles):  # the average won: best/ holds exactly the mean
        assert torch.allclose(best[name], mean)
    else:  # a single epoch won: best/ is not the mean
        assert not torch.allclose(best[name], mean)
    again = train(cfg, tc, data, data, fe, tmp_path / "run", progress=False)
    assert again["averaged"] == avg  # a rerun of the finished run does no more work
