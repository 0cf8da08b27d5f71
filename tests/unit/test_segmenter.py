import asyncio

import numpy as np
import pytest

from emomon.streamer.segmenter import Segmenter, SegmenterConfig
from emomon.streamer.sources.base import AudioChunk

SR = 16000


def _chunks(pcm, step=1600, channel="0"):
    for i in range(0, len(pcm), step):
        yield AudioChunk(channel, i / SR, pcm[i : i + step], final=i + step >= len(pcm))


def _run(seg, pcm, **kw):
    out = []
    for c in _chunks(pcm, **kw):
        out += seg.feed(c)
    return out + seg.flush()


def test_silence_gives_no_segments():
    assert _run(Segmenter(SegmenterConfig(aggressiveness=2)), np.zeros(SR * 3, np.int16)) == []
    rng = np.random.default_rng(0)
    assert (
        _run(
            Segmenter(SegmenterConfig(aggressiveness=2)),
            (rng.normal(0, 30, SR * 3)).astype(np.int16),
        )
        == []
    )


def test_speech_island_with_preroll_and_hangover(call_pcm):
    # "Hello?" of the call (6.69-7.12 s) surrounded by generated silence.
    word = call_pcm[int(6.6 * SR) : int(7.2 * SR)]
    pcm = np.concatenate([np.zeros(SR, np.int16), word, np.zeros(SR, np.int16)])
    cfg = SegmenterConfig(aggressiveness=2, preroll_ms=300, hangover_ms=300)
    segs = _run(Segmenter(cfg), pcm)
    assert len(segs) == 1
    s = segs[0]
    assert 0.6 <= s.start_s <= 1.1  # onset minus pre-roll
    assert 1.3 <= s.end_s <= 1.7
    assert s.hangover_s == pytest.approx(0.3, abs=0.031)
    assert len(s.pcm) == pytest.approx((min(s.end_s + 0.15, 2.6) - s.start_s) * SR, abs=SR * 0.031)


def test_max_utterance_splits_long_speech(call_pcm):
    speech = call_pcm[int(7.5 * SR) : int(21.5 * SR)]
    segs = _run(
        Segmenter(SegmenterConfig(aggressiveness=2, max_utterance_s=4.0, hangover_ms=900)), speech
    )
    assert len(segs) >= 3
    assert all(s.end_s - s.start_s <= 4.0 + 1e-6 for s in segs)
    assert any(s.forced_split for s in segs)


def test_channels_are_independent(call_pcm):
    word = call_pcm[int(6.6 * SR) : int(7.2 * SR)]
    a = np.concatenate([np.zeros(SR, np.int16), word, np.zeros(SR, np.int16)])
    b = np.zeros_like(a)
    seg = Segmenter(SegmenterConfig(aggressiveness=2))
    out = []
    for ca, cb in zip(_chunks(a, channel="L"), _chunks(b, channel="R"), strict=True):
        out += seg.feed(ca) + seg.feed(cb)
    assert [s.channel for s in out] == ["L"]


def test_cut_splits_an_open_segment(call_pcm):
    speech = call_pcm[int(7.5 * SR) : int(12.0 * SR)]
    seg = Segmenter(SegmenterConfig(aggressiveness=2, hangover_ms=900))
    for c in _chunks(speech[: 3 * SR]):
        assert not seg.feed(AudioChunk(c.channel, c.start_s, c.pcm))
    start, pcm = seg.open_audio("0")
    first = seg.cut("0", start + 1.5)
    assert first is not None and first.end_s == pytest.approx(start + 1.5, abs=0.031)
    start2, _ = seg.open_audio("0")
    assert start2 == pytest.approx(first.end_s)


def test_async_stage_flushes_at_end(call_pcm):
    async def go():
        async def gen():
            for c in _chunks(call_pcm[int(7.5 * SR) : int(9.0 * SR)]):
                yield AudioChunk(c.channel, c.start_s, c.pcm)  # never final: flush must close it

        return [s async for s in Segmenter(SegmenterConfig(aggressiveness=2)).segments(gen())]

    assert len(asyncio.run(go())) == 1


def test_bad_config():
    with pytest.raises(ValueError, match="frame_ms"):
        SegmenterConfig(frame_ms=25)


def test_end_wall_comes_from_capture_times_even_when_processed_late(call_pcm):
    # The source says when each sample was captured; the segments are processed 5 s later
    # (a backlog): end_wall still names the capture time of the end of speech, so latency
    # measured from it includes the backlog.
    word = call_pcm[int(6.6 * SR) : int(7.2 * SR)]
    pcm = np.concatenate([np.zeros(SR, np.int16), word, np.zeros(SR, np.int16)])
    t0 = 1_000_000.0
    seg = Segmenter(SegmenterConfig(aggressiveness=2, hangover_ms=300))
    out = []
    for i in range(0, len(pcm), 1600):
        part = pcm[i : i + 1600]
        out += seg.feed(AudioChunk("0", i / SR, part, wall_end=t0 + (i + part.size) / SR))
    (s,) = out
    assert s.end_wall == pytest.approx(t0 + s.end_s, abs=1e-6)
    # without capture times: detection time minus the hang-over, as before
    seg = Segmenter(SegmenterConfig(aggressiveness=2, hangover_ms=300))
    (s2,) = _run(seg, pcm)
    assert s2.end_wall == pytest.approx(s2.detected_wall - s2.hangover_s, abs=0.05)


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_a_draft_holds_exactly_the_audio_its_segment_will_close_with(call_pcm, frame_ms):
    """Early transcription (vad.early_asr_ms): at the first 150 ms of a pause the segmenter
    leaves a draft whose audio is what the segment holds when the hang-over closes it, so a
    transcript of the draft is the segment's; speech that resumes within the hang-over leaves a
    new draft at the next pause and the segment grows past the first one."""
    word = call_pcm[int(6.6 * SR) : int(7.2 * SR)]
    gap = np.zeros(int(0.02 * SR), np.int16)  # + the word's own edges: a pause under 300 ms
    pcm = np.concatenate([np.zeros(SR, np.int16), word, gap, word, np.zeros(SR, np.int16)])
    seg = Segmenter(
        SegmenterConfig(aggressiveness=2, hangover_ms=300, early_asr_ms=150, frame_ms=frame_ms)
    )
    drafts, segs = [], []
    for c in _chunks(pcm, step=320):  # 20 ms chunks, as RTP delivers them
        segs += seg.feed(c)
        drafts += seg.drafts()
    assert len(segs) == 1
    s, last = segs[0], drafts[-1]
    assert len(drafts) >= 2 and drafts[0].end_s < last.end_s  # the first pause did not close it
    assert (last.start_s, last.end_s, last.channel) == (s.start_s, s.end_s, s.channel)
    np.testing.assert_array_equal(last.pcm, s.pcm)
    off = Segmenter(SegmenterConfig(aggressiveness=2, hangover_ms=300, early_asr_ms=0))
    assert not [d for c in _chunks(pcm, step=320) if off.feed(c) is not None for d in off.drafts()]


def test_early_asr_must_cover_the_tail_and_end_before_the_hangover():
    from pydantic import ValidationError

    from emomon.services.settings import VadSettings

    assert VadSettings(early_asr_ms=0).early_asr_ms == 0
    for bad in (100, 300):
        with pytest.raises(ValidationError, match="early_asr_ms"):
            VadSettings(early_asr_ms=bad, hangover_ms=300)
