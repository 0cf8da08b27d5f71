"""Which language each stream speaks (issue 15, item 5).

The shipped ASR model, Whisper tiny.en, writes English whatever it hears: a Spanish call came
out as confident English nonsense ("in quantum cellos are a single.", fear 0.99). So the
language is detected, and with an English-only model non-English speech gets no transcript.

**Detector: Whisper base's own language head** (the multilingual model that ships offline,
:mod:`emomon.streamer.asr_models`). When base is the ASR model it is free: the decoder reads the
encoder output the transcription computes anyway. With tiny.en it costs one base encoder pass on
an 8 s window (``DETECT_WINDOW``, ``asr.lid_window_s``, of at most ``DETECT_MAX_S`` of speech)
plus one decoder step: 0.15-0.17 s per call on the idle 2-core machine, against 0.22-0.25 s for
the 10 s window of rounds 7-11, with the same answers on the dev clips (RAVDESS, TESS, espeak-ng
in four languages; ``benchmarks/bench_language.py --windows``). Windows of max(4-5 s, speech
+ 1-2 s) are cheaper still but read the short TESS words worse (mean p(en) 0.82-0.89 against
0.97), and a 4 s window calls the call's 0.9 s "Hello?" Korean (en 0.07 at 4 s, 0.49 at 10 s,
0.80 at 30 s). It runs per
*stream*, not per utterance: on each utterance until ``settle_s`` seconds of a stream's speech
agree, then once every ``recheck_s`` seconds of its speech. Short utterances say little (the
call's first "Hello." comes out as Korean, p 0.48), so the stream's answer is the
duration-weighted mean of the probability vectors measured so far, starting from a prior of
``prior_s`` seconds of English (a first 1.4 s of Spanish at p 0.75 already outweighs it). One
odd utterance does not flip a stream (espeak-ng Spanish: 6.2 s es 0.71, then 2.6 s th 0.87);
evidence fades over ``MEMORY_S`` seconds of speech, so a stream that really switches follows.
Alternatives considered: a text-based detector on tiny.en's output cannot work (tiny.en only
writes English), and no spoken-language-ID model other than Whisper is available offline here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emomon.model.audio import WhisperWindow, encode_whisper
from emomon.streamer.config import TranscriberConfig


def detect_window(seconds: float) -> WhisperWindow:
    """The detector's encoder window of ``seconds`` (``asr.lid_window_s``)."""
    return WhisperWindow(min_s=float(seconds), margin_s=0.0, level_dbfs=-23.0)


DETECT_WINDOW = detect_window(TranscriberConfig().lid_window_s)
DETECT_MAX_S = 8.0
SAMPLE_RATE_HZ = 16_000
#: evidence fades with this time constant (seconds of measured speech)
MEMORY_S = 60.0
#: measured speech after which a busy detector may skip a stream's utterance (``may_skip``)
SKIP_AFTER_S = 2.0
#: a loaded process puts off measuring a stream only while its language holds this share of
#: its evidence (the prior included) ...
DEFER_MIN_P = 0.8
#: ... and only until this much of its speech went unmeasured
DEFER_MAX_S = 6.0
#: how long an utterance waits for the evidence of the stream's earlier ones
ORDER_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class LanguageGuess:
    language: str
    probability: float  # the stream's mean probability of ``language``
    measured: bool  # this utterance went through the detector
    settled: bool  # enough of the stream's speech agrees


def language_probs(whisper_model: Any, encoder_output: Any) -> list[dict[str, float]]:
    """Per batch item, {language code: probability} from Whisper's language token."""
    out = []
    for item in whisper_model.model.detect_language(encoder_output):
        out.append({tok[2:-2]: float(p) for tok, p in item})
    return out


@dataclass
class StreamLanguage:
    """The evidence about one stream's language (thread-safe)."""

    settle_s: float
    recheck_s: float
    prior: str = "en"  # what a stream is taken to speak before much of it is heard
    prior_s: float = 1.0  # ... counted as this many seconds of certain evidence
    scores: dict[str, float] = field(default_factory=dict)  # Σ duration · probability
    measured_s: float = 0.0  # speech measured (the prior not included)
    since_check_s: float = 0.0
    settled: str | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _issued: int = 0  # tickets handed out
    _done: int = 0  # tickets whose utterance was added

    def __post_init__(self) -> None:
        if self.prior_s > 0:
            self.scores[self.prior] = self.prior_s

    def ticket(self) -> int:
        """A place in the stream's order, taken when its utterance is submitted: utterances
        transcribed concurrently still add their evidence in the order they were spoken."""
        with self._cond:
            self._issued += 1
            return self._issued - 1

    def wants_measurement(self) -> bool:
        with self._cond:
            return self.settled is None or self.since_check_s >= self.recheck_s

    def may_skip(self) -> bool:
        """Whether this stream's next measurement may be skipped when the detector is busy: only
        once ``SKIP_AFTER_S`` of its speech was measured, enough for a clearly foreign stream
        to outweigh the English prior (a stream the detector has hardly heard waits for it, so
        its first words are not written in the wrong language)."""
        with self._cond:
            return self.measured_s >= SKIP_AFTER_S

    def may_defer(self) -> bool:
        """Whether a loaded process may put off measuring this stream's next utterance: it was
        heard for ``SKIP_AFTER_S``, its language is clear (``DEFER_MIN_P``), and less than
        ``DEFER_MAX_S`` of its speech went unmeasured since. An unclear stream (a foreign one
        whose first words left the English prior ahead) is measured whenever the detector is
        free, and none goes unmeasured for long."""
        with self._cond:
            if self.measured_s < SKIP_AFTER_S or self.since_check_s >= DEFER_MAX_S:
                return False
            guess = self._guess(False)
            return guess is not None and guess.probability >= DEFER_MIN_P

    def current(self) -> LanguageGuess | None:
        """The stream's guess now, adding nothing."""
        with self._cond:
            return self._guess(False)

    def add(
        self, probs: dict[str, float] | None, duration_s: float, ticket: int | None = None
    ) -> LanguageGuess | None:
        """Add one utterance (``probs`` None: not measured); the stream's guess after it.

        With a ``ticket``, wait (at most ``ORDER_WAIT_S``) until the earlier tickets are in."""
        with self._cond:
            if ticket is None:
                ticket = self._issued
                self._issued += 1
            self._cond.wait_for(lambda: self._done >= ticket, timeout=ORDER_WAIT_S)
            self.since_check_s += duration_s
            if probs is not None:
                self._measure(probs, max(duration_s, 0.1))
            self._done = max(self._done, ticket + 1)
            self._cond.notify_all()
            return self._guess(probs is not None)

    def _guess(self, measured: bool) -> LanguageGuess | None:
        total = sum(self.scores.values())
        if total <= 0:
            return None
        lang = max(self.scores, key=self.scores.__getitem__)
        p = self.scores[lang] / total
        if self.settled is None and self.measured_s >= self.settle_s and p >= 0.5:
            self.settled = lang
        return LanguageGuess(lang, p, measured, self.settled is not None)

    def _measure(self, probs: dict[str, float], weight: float) -> None:
        self.since_check_s = 0.0
        keep = math.exp(-weight / MEMORY_S)  # older evidence fades: a stream may switch
        for k in list(self.scores):
            self.scores[k] *= keep
        for k, v in probs.items():
            self.scores[k] = self.scores.get(k, 0.0) + weight * v
        self.measured_s += weight
        if (
            self.settled is not None
            and max(self.scores, key=self.scores.__getitem__) != self.settled
        ):
            self.settled = None  # measured again every utterance until it settles anew


class LanguageDetector:
    """Whisper base's language head on a short encoder window of one utterance."""

    def __init__(self, whisper_model: Any, window: WhisperWindow = DETECT_WINDOW):
        self.model = whisper_model
        self.window = window
        self.calls = 0
        self.seconds = 0.0

    def detect(self, audio: np.ndarray) -> dict[str, float]:
        import time

        t0 = time.perf_counter()
        clip = np.asarray(audio, dtype=np.float32)[: int(DETECT_MAX_S * SAMPLE_RATE_HZ)]
        _, encoder_output, _ = encode_whisper(self.model, clip, self.window)
        probs = language_probs(self.model, encoder_output)[0]
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return probs


class DetectorQueue:
    """The language detector's own thread, and the rule for when an utterance waits for it.

    The detector (a Whisper base encoder pass) costs more than tiny.en's transcription of the
    same utterance, and a transcription waits for its answer. Under load a queue of detector
    calls would delay every utterance behind it: with 8 calls replayed at once the ASR stage's
    p95 was 6.7 s with every unsettled stream measured and 1.9 s with the language given
    (``benchmarks/bench_pipeline.py --parallel 8``, 2026-12-07). So a stream that the detector
    has heard enough of (:meth:`StreamLanguage.may_skip`) is measured only when the detector is
    free; otherwise it keeps its current guess for this utterance (counted in ``skipped``) and
    is measured on a later one that finds the detector idle. While the process is loaded
    (several utterances at the ASR, or turn detection lagging the audio) the caller also passes
    ``defer`` for streams whose language is clear (:meth:`StreamLanguage.may_defer`): they are
    not measured even by a free detector. At 8 staggered calls the detector otherwise kept about
    a core busy measuring streams it had already heard (README, round 11)."""

    def __init__(self, detect: Callable[[np.ndarray], dict[str, float]]):
        self._detect = detect
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lid")
        self._lock = threading.Lock()
        self.busy = 0  # calls running or queued
        self.skipped = 0  # utterances not measured: the detector was busy, or ``defer``
        self.deferred = 0  # ... of them put off by ``defer`` while the detector was free

    def submit(
        self, audio: np.ndarray, may_skip: bool, defer: bool = False
    ) -> Future[dict[str, float]] | None:
        """Start measuring ``audio``; None (not measured) when ``may_skip`` and the detector is
        busy, or when the caller puts the measurement off (``defer``: the process is loaded and
        the stream's language is clear)."""
        with self._lock:
            if may_skip and (self.busy or defer):
                self.skipped += 1
                self.deferred += int(not self.busy)
                return None
            self.busy += 1

        def run() -> dict[str, float]:
            try:
                return self._detect(audio)
            finally:
                with self._lock:
                    self.busy -= 1

        return self._pool.submit(run)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "DetectorQueue",
    "DETECT_WINDOW",
    "detect_window",
    "LanguageDetector",
    "LanguageGuess",
    "StreamLanguage",
    "language_probs",
]
