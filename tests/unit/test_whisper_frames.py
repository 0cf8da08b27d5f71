"""The ASR pass's encoder frames are exactly what the emotion model was trained on, for every
encoder window policy; short windows fall back to 30 s when Whisper starts to repeat itself."""

import dataclasses

import numpy as np
import pytest

from emomon.model.audio import DEFAULT_WINDOW, FULL_WINDOW, WhisperWindow, whisper_encoder_frames
from emomon.model.errors import AudioError
from emomon.streamer.transcriber import Transcriber, TranscriberConfig, looks_looped


def _clip(call_pcm: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return call_pcm[int(start_s * 16000) : int(end_s * 16000)].astype(np.float32) / 32768


@pytest.mark.parametrize("window", ["full", "10+8"])
def test_transcriber_frames_equal_model_recipe(call_pcm, window):
    tr = Transcriber(TranscriberConfig(encoder_window=window))
    try:
        audio = _clip(call_pcm, 8.4, 10.0)
        out = tr.transcribe_sync(audio)
        ref = whisper_encoder_frames(tr.model, audio, WhisperWindow.parse(window))
        assert out.frames is not None and out.frames.shape == ref.shape == (80, 384)
        assert np.array_equal(out.frames, ref)
        assert out.frames_window == window and not out.fallback and tr.trimmed == 0
        assert "know" in out.text.lower()
        if window != "full":  # another window, other frames: the recipe must be recorded
            full = whisper_encoder_frames(tr.model, audio, FULL_WINDOW)
            assert not np.array_equal(full, ref)
    finally:
        tr.close()


def test_window_policy_lengths():
    w = DEFAULT_WINDOW
    assert w.spec == "10+8" and WhisperWindow.parse("10+8") == w
    assert w.frames(150) == 1000  # 1.5 s of speech: the 10 s minimum
    assert w.frames(450) == 1300  # 4.5 s: speech + 8 s, whole seconds
    assert w.frames(2900) == 3000  # never more than Whisper's 30 s
    assert FULL_WINDOW.frames(10) == 3000 and WhisperWindow.parse("full") == FULL_WINDOW
    assert FULL_WINDOW.spec == "full"
    for bad in ("", "ten", "0+8", "40+0", "10+-1"):
        with pytest.raises(AudioError):
            WhisperWindow.parse(bad)


def test_loop_detector():
    assert looks_looped("Hello Hello Hello", 1.2) is False  # one word repeated: real speech does
    assert looks_looped("This is Diane. This is Diane. This is Diane", 1.5) is True
    assert looks_looped("Well, there isn't that much difference.", 1.1) is False
    assert looks_looped("anything", 2.5) is True  # above faster-whisper's compression threshold


def test_a_looping_short_window_falls_back_to_30_s(call_pcm):
    # A 1 s minimum window without margin leaves no silence after the speech: tiny.en repeats
    # "This is Diane in New Jersey." until its token budget; the 30 s decode gets it right, and
    # the frames still follow the configured window.
    tr = Transcriber(TranscriberConfig(encoder_window="1+0"))
    try:
        audio = _clip(call_pcm, 12.5, 14.3)
        out = tr.transcribe_sync(audio)
        assert out.fallback and tr.fallbacks == 1
        assert out.text.lower().count("diane") == 1 and "jersey" in out.text.lower()
        ref = whisper_encoder_frames(tr.model, audio, WhisperWindow.parse("1+0"))
        assert out.frames is not None and np.array_equal(out.frames, ref)
    finally:
        tr.close()


def test_a_runaway_transcript_is_cut_back_to_what_the_speech_can_hold():
    from emomon.streamer.asr_decode import trim_runaway

    ok = "Dogs are sitting by the door. Kids are talking by the door."
    assert trim_runaway(ok, 3.0) == ok  # 12 words in 3 s: speech
    assert trim_runaway(ok, 1.6) == ok  # exactly at the limit (4 + 8 words)
    loop = "Dogs are sitting by the door. " * 32  # 192 words, as seen for 11.2 s under load
    cut = trim_runaway(loop.strip(), 11.2)
    assert len(cut.split()) <= 4 + 5 * 11.2 and cut.endswith("door.")
    assert len(cut.split()) >= 40  # what 11 s of this speech really held stays
    # the last sentence end lies in the first half: cut at the word limit instead
    assert trim_runaway("Yes. " + "la " * 100, 1.0) == "Yes. " + " ".join(["la"] * 8)
    # a full stop inside a number is not a sentence end
    assert trim_runaway("it was 3.5 " + "la " * 20, 1.0).split()[-1] == "la"
    # no spaces, no words to count: left to the token budget
    assert trim_runaway("\u3042" * 500, 1.0) == "\u3042" * 500


def test_a_30_s_redo_that_still_loops_is_bounded_and_cut_back(call_pcm, monkeypatch, caplog):
    """When every temperature of the 30 s redo of a looping short-window decode loops too,
    faster-whisper keeps the best of them; the redo gets the speech's token budget and its
    text what the speech can hold. A plain full-window decode gets neither."""
    import logging

    from emomon.streamer.asr_decode import token_budget

    tr = Transcriber(TranscriberConfig(encoder_window="1+0"))  # loops on this clip (above)
    try:
        audio = _clip(call_pcm, 12.5, 14.3)  # 1.8 s: at most 4 + 9 words
        seen = []
        real = tr.model.generate_segments

        def looping(features, tokenizer, options, log_progress, encoder_output):
            seen.append(options.max_new_tokens)
            segs = list(real(features, tokenizer, options, log_progress, encoder_output))
            assert segs, "the real decode gave no segment"
            return [dataclasses.replace(s, text=" This is Diane." * 40) for s in segs]

        monkeypatch.setattr(tr.model, "generate_segments", looping)
        with caplog.at_level(logging.WARNING, logger="emomon.streamer.transcriber"):
            out = tr.transcribe_sync(audio)
        assert out.fallback and seen == [token_budget(audio.size / 16000)]
        assert out.text.startswith("This is Diane.") and len(out.text.split()) <= 13
        assert tr.trimmed == 1 and "ran away" in caplog.text
    finally:
        tr.close()
    full = Transcriber(TranscriberConfig(encoder_window="full"))
    try:
        seen.clear()
        real = full.model.generate_segments
        monkeypatch.setattr(full.model, "generate_segments", looping)
        out = full.transcribe_sync(audio)
        assert seen == [None] and full.trimmed == 0  # Whisper's own limit, text as decoded
        assert out.text.count("Diane") == 40
    finally:
        full.close()
