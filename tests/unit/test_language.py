"""Each stream's language (issue 15, item 5): evidence weighted by duration from an English
prior, settled after enough speech, rechecked, and not flipped by one odd utterance."""

from __future__ import annotations

from emomon.streamer.language import StreamLanguage


def probs(lang: str, p: float) -> dict[str, float]:
    return {lang: p, "xx": 1.0 - p}


def test_a_short_ambiguous_first_utterance_stays_english():
    st = StreamLanguage(settle_s=6.0, recheck_s=30.0)
    g = st.add({"ko": 0.48, "en": 0.45, "fr": 0.07}, 0.9)  # the call's first "Hello?"
    assert g is not None and g.language == "en" and not g.settled


def test_spanish_outweighs_the_prior_and_settles():
    st = StreamLanguage(settle_s=6.0, recheck_s=30.0)
    g = st.add(probs("es", 0.75), 1.4)
    assert g is not None and g.language == "es" and not g.settled
    assert st.wants_measurement()
    g = st.add(probs("es", 0.9), 5.0)
    assert g is not None and g.language == "es" and g.settled
    assert not st.wants_measurement()  # settled: measured again after recheck_s of speech
    for _ in range(6):
        assert st.add(None, 5.0).language == "es"  # type: ignore[union-attr]
    assert st.wants_measurement()


def test_one_odd_utterance_does_not_flip_a_settled_stream_but_a_switch_does():
    st = StreamLanguage(settle_s=6.0, recheck_s=30.0)
    st.add(probs("es", 0.71), 6.2)
    g = st.add(probs("th", 0.87), 2.6)
    assert g is not None and g.language == "es"
    for _ in range(6):  # the speaker really switches to English
        g = st.add(probs("en", 0.95), 4.0)
    assert g is not None and g.language == "en"


def test_evidence_goes_in_in_the_order_spoken():
    """Two utterances transcribed concurrently: the second's evidence waits for the first's
    (else espeak-ng Spanish came out 'th' when its 2.6 s 'th 0.87' sentence finished first)."""
    import threading

    st = StreamLanguage(settle_s=6.0, recheck_s=30.0)
    first, second = st.ticket(), st.ticket()
    got = {}
    t = threading.Thread(target=lambda: got.update(b=st.add(probs("th", 0.87), 2.6, second)))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # waiting for the first utterance
    got["a"] = st.add(probs("es", 0.71), 6.2, first)
    t.join(2)
    assert got["a"].language == "es" and got["b"].language == "es"


def test_a_busy_detector_skips_only_streams_it_has_heard_enough_of():
    """Under load the detector is not queued for streams measured for 2 s already; a new
    stream always waits for it (its first words must not be written in the wrong language)."""
    import threading

    import numpy as np

    from emomon.streamer.language import SKIP_AFTER_S, DetectorQueue

    release = threading.Event()
    calls: list[int] = []

    def detect(audio: np.ndarray) -> dict[str, float]:
        release.wait(5)
        calls.append(audio.size)
        return {"en": 1.0}

    q = DetectorQueue(detect)
    try:
        new, heard = StreamLanguage(6.0, 30.0), StreamLanguage(6.0, 30.0)
        heard.add(probs("en", 0.9), SKIP_AFTER_S)
        assert not new.may_skip() and heard.may_skip()
        first = q.submit(np.zeros(1), heard.may_skip())  # a free detector measures anyone
        assert first is not None
        assert q.submit(np.zeros(2), heard.may_skip()) is None  # busy: skipped, counted
        queued = q.submit(np.zeros(3), new.may_skip())  # busy, but a new stream waits
        assert queued is not None and q.skipped == 1
        release.set()
        assert first.result(5) == {"en": 1.0} and queued.result(5) == {"en": 1.0}
        assert calls == [1, 3] and q.busy == 0
        assert q.submit(np.zeros(4), heard.may_skip()) is not None  # free again: measured
    finally:
        release.set()
        q.close()


def test_a_loaded_process_defers_only_streams_it_has_heard_enough_of():
    """``defer`` (the process is loaded) holds back re-measurements of streams the detector
    has heard for SKIP_AFTER_S, even when the detector is free; a new stream is still measured."""
    import numpy as np

    from emomon.streamer.language import SKIP_AFTER_S, DetectorQueue

    q = DetectorQueue(lambda audio: {"en": 1.0})
    try:
        new, heard = StreamLanguage(6.0, 30.0), StreamLanguage(6.0, 30.0)
        heard.add(probs("en", 0.9), SKIP_AFTER_S)
        assert q.submit(np.zeros(1), heard.may_skip(), defer=True) is None
        assert (q.skipped, q.deferred) == (1, 1)
        job = q.submit(np.zeros(1), new.may_skip(), defer=True)
        assert job is not None and job.result(5) == {"en": 1.0}
        assert q.submit(np.zeros(1), heard.may_skip(), defer=False) is not None
        assert (q.skipped, q.deferred) == (1, 1)
    finally:
        q.close()


def test_the_load_signal_says_behind_for_hold_s_after_any_lag():
    from emomon.streamer.stages import LoadSignal

    load = LoadSignal()
    assert not load.behind(100.0)
    assert load.level(200.0, 300.0, 100.0) == (True, False)  # keeping up
    assert not load.behind(100.0)
    assert load.level(400.0, 300.0, 100.0) == (False, False)  # behind, not far
    assert load.behind(100.0) and load.behind(100.0 + LoadSignal.HOLD_S)
    assert not load.behind(100.0 + LoadSignal.HOLD_S + 0.1)


def test_the_transcriber_puts_off_clear_streams_only_while_loaded(call_pcm):
    """The wiring: the real transcriber asks a (stub) detector about a stream heard for 3 s
    unless the process is loaded (``load_hint``) and the stream's language is clear; with
    ``asr.lid_defer_under_load = false`` load changes nothing; an unclear stream is always
    measured when the detector is free."""
    import numpy as np

    from emomon.streamer.language import DetectorQueue
    from emomon.streamer.transcriber import Transcriber, TranscriberConfig

    # a stretch of the call's speech (int16 -> float)
    speech = call_pcm[int(10.0 * 16000) : int(13.0 * 16000)].astype(np.float32) / 32768.0
    for defer_on in (True, False):
        tr = Transcriber(TranscriberConfig(lid_defer_under_load=defer_on, lid_settle_s=30.0))
        calls: list[int] = []
        tr._lid.close()  # type: ignore[union-attr]
        tr._lid = DetectorQueue(lambda a, calls=calls: calls.append(a.size) or {"en": 0.95})
        try:
            tr._stream("s/clear").add(probs("en", 0.95), 3.0)
            tr._stream("s/unclear").add(probs("es", 0.5), 3.0)  # en 1.0 : es 1.5 : xx 1.5
            tr.load_hint = lambda: True
            tr.transcribe_batch_sync([speech], ["s/clear"])
            assert len(calls) == (0 if defer_on else 1)
            assert tr._lid.deferred == (1 if defer_on else 0)
            tr.transcribe_batch_sync([speech], ["s/unclear"])
            assert len(calls) == (1 if defer_on else 2)
            tr.load_hint = lambda: False
            tr.transcribe_batch_sync([speech], ["s/clear"])
            assert len(calls) == (2 if defer_on else 3)
        finally:
            tr.close()


def test_a_clear_stream_is_put_off_for_at_most_defer_max_s_of_its_speech():
    from emomon.streamer.language import DEFER_MAX_S, SKIP_AFTER_S

    st = StreamLanguage(6.0, 30.0)
    assert not st.may_defer()  # not heard yet
    st.add(probs("en", 0.95), SKIP_AFTER_S)
    assert st.may_defer()
    st.add(None, DEFER_MAX_S - 0.5)  # unmeasured speech
    assert st.may_defer()
    st.add(None, 0.5)
    assert not st.may_defer()  # measured again on its next utterance
    st.add(probs("en", 0.95), 1.0)
    assert st.may_defer()


def test_the_detection_window_is_a_setting_and_still_hears_english(call_pcm):
    """``asr.lid_window_s`` reaches the real detector (8 s by default since round 12, a third
    cheaper than 10 s); with either window Whisper base hears a stretch of the call as
    English, and a window outside 4-30 s is a one-line settings error."""
    import numpy as np
    import pytest

    from emomon.services.settings import SettingsError, load_settings
    from emomon.streamer.transcriber import Transcriber, TranscriberConfig

    speech = call_pcm[int(14.5 * 16000) : int(17.7 * 16000)].astype(np.float32) / 32768.0
    for window_s in (None, 10):
        cfg = TranscriberConfig() if window_s is None else TranscriberConfig(lid_window_s=window_s)
        tr = Transcriber(cfg)
        try:
            assert tr.detector is not None
            assert tr.detector.window.min_s == (window_s or TranscriberConfig().lid_window_s)
            got = tr.detector.detect(speech)
            assert max(got, key=got.__getitem__) == "en" and got["en"] > 0.5
        finally:
            tr.close()
    from emomon.services.pipeline import transcriber_config

    cfg = transcriber_config(load_settings(overrides={"asr": {"lid_window_s": 10}}, environ={}))
    assert cfg.lid_window_s == 10  # the setting reaches the transcriber's config
    with pytest.raises(SettingsError, match="lid_window_s"):
        load_settings(overrides={"asr": {"lid_window_s": 2}}, environ={})
