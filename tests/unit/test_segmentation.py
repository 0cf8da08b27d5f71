"""Frame-level turns: find_turn on made-up frames, and the real segmentation-3.0 on the call."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from emomon.streamer.segmentation import SpeakerSegmentation, find_turn

SR = 16_000
STEP = 0.016875
CLASSES = [c for k in range(3) for c in itertools.combinations(range(3), k)]


def _frames(*runs: tuple[tuple[int, ...], float]) -> np.ndarray:
    """(frames, 7) one-hot powerset probabilities from (active speakers, seconds) runs."""
    rows = []
    for who, seconds in runs:
        row = np.full(len(CLASSES), 0.01, dtype=np.float32)
        row[CLASSES.index(who)] = 0.94
        rows += [row] * int(round(seconds / STEP))
    return np.stack(rows)


def test_one_voice_is_no_turn():
    assert find_turn(_frames(((0,), 2.0)), CLASSES, STEP) is None
    assert find_turn(_frames(((), 0.3), ((1,), 1.0), ((), 0.5)), CLASSES, STEP) is None
    assert find_turn(_frames(((), 1.0)), CLASSES, STEP) is None


def test_a_then_b():
    turn = find_turn(_frames(((0,), 1.0), ((2,), 0.4)), CLASSES, STEP)
    assert turn is not None
    assert turn.onset == int(round(1.0 / STEP))
    assert turn.new_s == pytest.approx(0.4, abs=STEP)
    assert turn.before_s == pytest.approx(1.0, abs=STEP)


def test_short_pause_and_overlap_belong_to_the_new_turn():
    # A, a 0.1 s pause, B: the turn starts where B does (the pause is skipped back over)
    t = find_turn(_frames(((0,), 1.0), ((), 0.1), ((1,), 0.3)), CLASSES, STEP)
    assert t is not None and t.onset == round(1.0 / STEP) + round(0.1 / STEP)
    # A, both at once, B: the turn starts where B joined in
    t = find_turn(_frames(((0,), 1.0), ((0, 1), 0.2), ((1,), 0.3)), CLASSES, STEP)
    assert t is not None and t.onset == int(round(1.0 / STEP))
    assert t.new_s == pytest.approx(0.5, abs=STEP)
    # a pause longer than max_gap_s: B's turn starts after it, A still counts as before
    t = find_turn(_frames(((0,), 1.0), ((), 0.5), ((1,), 0.3)), CLASSES, STEP, max_gap_s=0.15)
    assert t is not None and t.onset == round(1.0 / STEP) + round(0.5 / STEP)


def test_the_newest_voice_counts():
    # A B A: the turn found is the last one, back to A, over B
    t = find_turn(_frames(((0,), 1.0), ((1,), 0.8), ((0,), 0.3)), CLASSES, STEP)
    assert t is not None
    assert t.onset == round(1.0 / STEP) + round(0.8 / STEP)
    assert t.before_s == pytest.approx(0.8, abs=STEP)


@pytest.fixture(scope="module")
def seg() -> SpeakerSegmentation:
    from emomon.streamer.config import set_torch_threads

    set_torch_threads(1)  # as the pipeline runs it
    return SpeakerSegmentation()


def test_real_model_finds_the_turn_in_the_call(seg, call_pcm):
    """Sheila (14.49-17.92 s in the RTTM) hands over to Diane (from 18.05 s)."""
    audio = call_pcm.astype(np.float32) / 32768
    start, end = 15.5, 18.7
    probs = seg.frames([audio[int(start * SR) : int(end * SR)]])[0]
    assert probs.shape[1] == len(seg.classes) == 7
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    turn = find_turn(probs, seg.classes, seg.frame_step)
    assert turn is not None
    assert abs(start + seg.frame_time(turn.onset) - 18.05) < 0.2, turn
    # one voice (Sheila alone, 22.0-25.0 s): no turn
    one = seg.frames([audio[22 * SR : 25 * SR]])[0]
    assert find_turn(one, seg.classes, seg.frame_step) is None


@pytest.mark.parametrize("runtime", ["auto", "torch"])
def test_optimised_model_matches_the_eager_one(seg, call_pcm, runtime):
    """ONNX Runtime (the default) and the traced graph (speakers.runtime=torch) both give the
    eager network's frames, at every window length the detector reads."""
    fast = seg if runtime == "auto" else SpeakerSegmentation(runtime="torch")
    eager = SpeakerSegmentation(jit=False)
    assert fast.runtime == ("onnx" if runtime == "auto" else "torchscript")
    assert eager.runtime == "eager"
    audio = call_pcm.astype(np.float32) / 32768
    for seconds in (0.6, 2.0, 3.0):
        wins = [audio[int(s * SR) : int(s * SR) + int(seconds * SR)] for s in (9.0, 22.5)]
        a, b = fast.frames(wins), eager.frames(wins)
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-4
