"""Whisper batched across sessions (issue 16, item 2): the shipped call's utterances give the
same text and the same encoder frames whether transcribed one by one or as one batch, and
concurrent ``transcribe`` calls are batched."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from emomon.streamer.transcriber import Transcriber, TranscriberConfig
from tests.conftest import DATA


@pytest.fixture(scope="module")
def call_utterances(call_pcm) -> list[np.ndarray]:
    """The call cut at its reference (STM) turns ± 0.2 s, float32."""
    out = []
    for line in (DATA / "phone-call-2spk.stm").read_text().splitlines():
        f = line.split(maxsplit=5)
        s, e = float(f[3]) - 0.2, float(f[4]) + 0.2
        out.append(call_pcm[int(s * 16000) : int(e * 16000)].astype(np.float32) / 32768)
    return out


@pytest.fixture(scope="module")
def transcriber():
    # the same beam alone and batched (the adaptive beam would otherwise widen a lone call)
    cfg = TranscriberConfig(
        encoder_window="10+8/-23", language="en", batch_max=8, beam_size=1, busy_beam_size=1
    )
    tr = Transcriber(cfg)
    yield tr
    tr.close()


def test_batched_equals_unbatched_on_the_call(transcriber, call_utterances):
    alone = [transcriber.transcribe_sync(a) for a in call_utterances]
    batched = transcriber.transcribe_batch_sync(call_utterances, [None] * len(call_utterances))
    assert [t.text for t in batched] == [t.text for t in alone]
    assert sum(bool(t.text) for t in alone) >= 12  # real transcripts, not empty ones
    for a, b in zip(alone, batched, strict=True):
        assert a.frames is not None and b.frames is not None and a.frames.shape == b.frames.shape
        np.testing.assert_allclose(a.frames, b.frames, atol=1e-3)
    # several window lengths occur: the batch really was split into groups
    lengths = {max(10, int(np.ceil(a.size / 16000 + 8))) for a in call_utterances}
    assert len(lengths) >= 2


def test_concurrent_calls_are_batched(transcriber, call_utterances):
    async def main() -> list[str]:
        results = await asyncio.gather(
            *(transcriber.transcribe(a, f"s{i}") for i, a in enumerate(call_utterances[:8]))
        )
        return [r.text for r in results]

    texts = asyncio.run(main())
    assert texts == [transcriber.transcribe_sync(a).text for a in call_utterances[:8]]
    sizes = transcriber.batch_sizes
    assert sum(k * v for k, v in sizes.items()) == 8 and max(sizes) > 1, sizes


def test_batching_can_be_turned_off(call_utterances):
    tr = Transcriber(TranscriberConfig(encoder_window="10+8/-23", language="en", batch_max=1))
    try:

        async def main() -> list[str]:
            rs = await asyncio.gather(*(tr.transcribe(a) for a in call_utterances[:3]))
            return [r.text for r in rs]

        assert all(asyncio.run(main()))
        assert tr.batch_sizes == {}
    finally:
        tr.close()


def test_the_beam_narrows_under_load(call_utterances):
    tr = Transcriber(
        TranscriberConfig(encoder_window="10+8/-23", language="en", beam_size=5, busy_beam_size=1)
    )
    try:
        tr.transcribe_sync(call_utterances[0])
        assert tr.beams == {5: 1}  # alone, nothing waiting: the wide beam
        tr.transcribe_batch_sync(call_utterances[1:3], [None, None])
        assert tr.beams == {5: 1, 1: 2}  # two at once: greedy
    finally:
        tr.close()


def test_the_full_window_decode_narrows_its_beam_under_load_too(call_utterances, monkeypatch):
    tr = Transcriber(
        TranscriberConfig(encoder_window="full", language="en", beam_size=5, busy_beam_size=1)
    )
    try:
        used = []
        real = tr.model.generate_segments

        def spy(features, tokenizer, options, log_progress, encoder_output):
            used.append(options.beam_size)
            return real(features, tokenizer, options, log_progress, encoder_output)

        monkeypatch.setattr(tr.model, "generate_segments", spy)
        alone = tr.transcribe_sync(call_utterances[0])
        tr.transcribe_batch_sync(call_utterances[1:3], [None, None])
        assert used == [5, 1, 1] and tr.beams == {5: 1, 1: 2}
        assert alone.text
    finally:
        tr.close()
