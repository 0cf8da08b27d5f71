"""The causal conversation-context model: history indexing, the no-history identity, training,
checkpoint files, and EmotionModel's in-batch / stored-history paths agreeing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from emomon.model import CheckpointError, EmotionInput, EmotionModel
from emomon.model.checkpoint import save_checkpoint
from emomon.model.context import (
    ContextConfig,
    ContextModel,
    ContextTurn,
    history_index,
    load_context,
    model_logits,
    save_context,
    train_context,
    turn_data,
)
from emomon.model.errors import ConfigError
from emomon.model.features import TextFrontEnd
from emomon.model.testing import make_tiny_text_encoder, tiny_config
from emomon.model.train import build_net


def test_history_index_is_causal_left_padded_and_per_dialogue() -> None:
    groups = ["a", "a", "b", "a", "b", "a"]
    speakers = ["x", "y", "x", "x", "z", "y"]
    hist, same, prev = history_index(groups, speakers, turns=2)
    assert hist.tolist() == [[-1, -1], [-1, 0], [-1, -1], [0, 1], [-1, 2], [1, 3]]
    assert same.tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [0, 0], [1, 0]]
    # the same speaker's previous turn, however far back in the dialogue
    assert prev.tolist() == [-1, -1, -1, 0, -1, 1]


def _tiny_ctx(seed: int = 0) -> ContextModel:
    torch.manual_seed(seed)
    m = ContextModel(12, 4, ContextConfig(turns=3, hidden=8, members=2))
    for p in m.parameters():  # the last layer starts at zero; make the correction non-trivial
        torch.nn.init.normal_(p, std=0.3)
    return m.eval()


def test_no_history_gives_the_utterance_logits_bit_for_bit() -> None:
    m = _tiny_ctx()
    feats, logits = torch.randn(5, 12), torch.randn(5, 4)
    h, same, valid = m.batch_history([[]] * 5)
    with torch.no_grad():
        assert torch.equal(m(feats, logits, h, same, valid), logits)
        hist = [[ContextTurn(np.random.default_rng(0).standard_normal(16), True)]] + [[]] * 4
        out = m(feats, logits, *m.batch_history(hist))
    assert not torch.equal(out[0], logits[0]) and torch.equal(out[1:], logits[1:])


def test_only_the_last_turns_count_and_bad_memory_is_refused() -> None:
    m = _tiny_ctx()
    rng = np.random.default_rng(1)
    turns = [ContextTurn(rng.standard_normal(16), bool(i % 2)) for i in range(5)]
    a = m.batch_history([turns])
    b = m.batch_history([turns[-3:]])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match="memory has 7 values"):
        m.batch_history([[ContextTurn(np.zeros(7), True)]])


def test_context_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="context.turns"):
        ContextConfig(turns=0)
    with pytest.raises(ConfigError, match="unknown context config"):
        ContextConfig.from_dict({"turnz": 3})


def test_training_learns_from_the_previous_turn() -> None:
    """Labels that only the previous turn reveals: the utterance logits carry nothing, the
    previous turn's logits name the class; the head must learn to read the history."""
    rng = np.random.default_rng(0)
    n, c, d = 600, 3, 8
    labels = rng.integers(0, c, n)
    groups = [str(i // 2) for i in range(n)]  # dialogues of two turns
    logits = np.zeros((n, c), np.float32)
    for i in range(0, n, 2):
        logits[i, labels[i + 1]] = 4.0  # turn 1 says what turn 2 will be
    feats = rng.standard_normal((n, d)).astype(np.float32)
    td = turn_data(feats, logits, labels, groups, ["s"] * n, turns=2)
    second = torch.arange(1, n, 2)

    def score(out: torch.Tensor) -> float:
        return float((out[second].argmax(1) == td.labels[second]).float().mean())

    cfg = ContextConfig(turns=2, hidden=16, members=1, epochs=8, lr=3e-3, dropout=0.0)
    model, report = train_context(cfg, td, td, score, log=lambda *_: None)
    assert score(td.logits) < 0.5  # chance: ~1/3
    assert score(model_logits(model, td)) > 0.9
    assert report[0]["best_epoch"] >= 1 and len(report[0]["dev_by_epoch"]) == 8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    enc = make_tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"))
    cfg = tiny_config(enc)
    torch.manual_seed(0)
    net = build_net(cfg, TextFrontEnd(cfg)).eval()
    folder = tmp_path_factory.mktemp("ck")
    save_checkpoint(net, folder)
    feat_dim = net.text_dim + cfg.audio_dim
    torch.manual_seed(1)
    ctx = ContextModel(feat_dim, len(cfg.labels), ContextConfig(turns=4, hidden=8, members=2))
    for p in ctx.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_context(ctx, folder, extra={"test": True})
    return folder


def test_context_round_trip_and_missing_half(ckpt, tmp_path) -> None:
    a, b = load_context(ckpt), load_context(ckpt)
    assert a is not None and b is not None
    x = torch.randn(2, a.feat_dim)
    lg = torch.randn(2, a.num_labels)
    h = [[ContextTurn(np.ones(a.memory_dim, np.float16), True)], []]
    with torch.no_grad():
        assert torch.equal(a(x, lg, *a.batch_history(h)), b(x, lg, *b.batch_history(h)))
    assert load_context(tmp_path) is None  # a folder without a context model
    (tmp_path / "context.json").write_text((ckpt / "context.json").read_text())
    with pytest.raises(CheckpointError, match="needs both"):
        load_context(tmp_path)


def test_emotion_model_context_in_batch_equals_stored_history(ckpt) -> None:
    # fp32: dynamic int8 scales activations per batch, so int8 answers shift with the batch
    model = EmotionModel.load(ckpt, device="cpu", quantize="none")
    assert model.context is not None and "+ctx@" in model.model_id
    frames = np.random.default_rng(0).standard_normal((60, model.cfg.whisper_dim))
    frames = frames.astype(np.float32)
    a = EmotionInput("i am so happy!", whisper_frames=frames, session="s1", speaker="A")
    b = EmotionInput("what is the door", whisper_frames=frames, session="s1", speaker="B")
    other = EmotionInput("no", whisper_frames=frames, session="s2", speaker="A")
    together = model.predict([a, other, b])
    assert [p.context_turns for p in together] == [0, 0, 1]  # s2 does not see s1
    first = model.predict([a])[0]
    assert first.memory is not None and first.memory.dtype == np.float16
    assert first.memory.shape == (model.context.memory_dim,)
    stored = model.predict(
        [EmotionInput(b.text, whisper_frames=frames, history=(ContextTurn(first.memory, False),))]
    )[0]
    assert stored.context_turns == 1
    assert stored.probabilities == pytest.approx(together[2].probabilities, abs=1e-5)
    alone = EmotionModel.load(ckpt, device="cpu", quantize="none", context=False).predict([b])[0]
    assert alone.context_turns == 0 and alone.memory is None
    assert alone.probabilities != pytest.approx(stored.probabilities, abs=1e-6)
    # no text: the context model (trained on turns with text) is not used
    no_text = model.predict([EmotionInput(None, whisper_frames=frames, history=stored_hist(first))])
    assert no_text[0].context_turns == 0


def stored_hist(pred) -> tuple[ContextTurn, ...]:
    return (ContextTurn(pred.memory, True),)


def test_worker_feeds_a_sessions_earlier_turns_from_the_store(ckpt) -> None:
    from emomon.services.context import InMemoryContextStore
    from emomon.services.settings import WorkerSettings
    from emomon.services.worker import FusionWorker
    from emomon.streamer.utterance import Utterance

    model = EmotionModel.load(ckpt, device="cpu")
    store = InMemoryContextStore(ttl_s=60)
    worker = FusionWorker(WorkerSettings(), model=model, context=store)

    def utt(i: int, speaker: str, text: str) -> Utterance:
        pcm = (np.random.default_rng(i).standard_normal(16000) * 3000).astype(np.int16)
        return Utterance(
            session="call",
            speaker=speaker,
            utterance_id=f"call/{i}",
            channel="0",
            start_s=float(i),
            end_s=i + 0.9,
            pcm=pcm,
            text=text,
            end_wall=0.0,
            whisper_frames=np.random.default_rng(i)
            .standard_normal((40, model.cfg.whisper_dim))
            .astype(np.float32),
            whisper_window=model.frames_recipe,
        )

    async def go() -> list[int]:
        seen = []
        for i, (spk, text) in enumerate([("A", "hello"), ("B", "no"), ("A", "yes great")]):
            events = await worker.classify([utt(i, spk, text)])
            await store.append(events)
            seen.append(events[0].context_turns)
            assert events[0].memory is not None and "memory" not in events[0].to_dict()
        return seen

    try:
        assert asyncio.run(go()) == [0, 1, 2]
    finally:
        worker.close()
    off = FusionWorker(WorkerSettings(context=False), model=model, context=store)
    assert off.context is None
    off.close()


def test_a_failing_context_store_is_counted_and_the_utterance_still_classified(ckpt) -> None:
    from emomon.services.settings import WorkerSettings
    from emomon.services.worker import FusionWorker
    from emomon.streamer.utterance import Utterance

    class DownStore:
        async def append(self, events) -> None:  # pragma: no cover - not reached
            raise ConnectionError("redis went away")

        async def recent(self, session, speaker=None, n=None):
            raise ConnectionError("redis went away")

    model = EmotionModel.load(ckpt, device="cpu")
    worker = FusionWorker(WorkerSettings(), model=model, context=DownStore())
    u = Utterance(
        session="s",
        speaker="A",
        channel="0",
        utterance_id="s/1",
        start_s=0.0,
        end_s=1.0,
        end_wall=0.0,
        pcm=np.zeros(16000, np.int16),
        text="hello",
    )
    try:
        events = asyncio.run(worker.classify([u]))
    finally:
        worker.close()
    assert len(events) == 1 and events[0].context_turns == 0
    assert worker.context_errors == 1
