"""Speech-to-text with faster-whisper, off the event loop.

The Whisper encoder runs once per utterance: its output feeds the decoder here *and* is
returned as per-frame features (50 frames/s) for the emotion model's Whisper audio front-end,
so emotion recognition costs no second encoder pass. Both use ``emomon.model.audio``'s
window recipe (a test checks the frames are bit-identical).

The encoder window follows the utterance (``encoder_window``, default ``10+8``: max(10 s,
speech + 8 s) instead of a fixed 30 s), which makes the encoder ~4x cheaper on a CPU. A short
window can make Whisper repeat itself; the first decode therefore runs greedily with a token
budget that follows the speech length (it bounds the time a loop can take), and if the text
looks like a loop (gzip compression ratio above 2.4, or one three-word phrase three times) the
utterance is decoded again from a full 30 s encoder pass with the usual temperature fallback
(with the same token budget; a text that still loops is cut back to the words the speech can
hold: :func:`~emomon.streamer.asr_decode.trim_runaway`).
The emotion frames always come from the configured window, so they match the recipe the
emotion checkpoint was trained with.

Around the decode (issues 15.5, 18.4, 16.2):

* **language** — each stream's language is detected (:mod:`emomon.streamer.language`); with an
  English-only model, non-English speech gets no text (no English nonsense), its utterance
  carries the detected language, and one WARNING per stream says so. While a stream is being
  measured the detector runs in its own thread beside the decode (which is then kept or
  dropped; once 2 s of a stream were measured, an utterance that finds the detector busy is
  not measured: :class:`~emomon.streamer.language.DetectorQueue`); once its language is
  settled, non-English utterances are not decoded at all;
* **noise** — a segment with hardly any pitched frames (:mod:`emomon.streamer.speech_check`)
  is marked ``no_speech`` and loses any text Whisper wrote on it;
* **batching** — utterances of several sessions that wait together share one encoder and one
  decoder call (:mod:`emomon.streamer.asr_batch`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from emomon.model.audio import FULL_WINDOW, WhisperWindow, encode_whisper
from emomon.model.errors import AudioError
from emomon.streamer.asr_batch import AsrBatcher, encode_batch, select_rows
from emomon.streamer.asr_decode import (
    TEMPERATURES,
    decode_group,
    looks_looped,
    token_budget,
    trim_runaway,
    whisper_options,
)
from emomon.streamer.asr_models import SHIPPED_MODEL, AsrModelError, model_folder
from emomon.streamer.config import TranscriberConfig
from emomon.streamer.language import (
    DetectorQueue,
    LanguageDetector,
    LanguageGuess,
    StreamLanguage,
    detect_window,
    language_probs,
)
from emomon.streamer.speech_check import pitched_ratio
from emomon.streamer.utterance import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)
#: a bound on the redo's token budget: Whisper's decoder holds 448 tokens, the prompt (2-4
#: tokens, no previous text) included; only audio over 42 s would reach it
MAX_FULL_TOKENS = 440


#: streams whose language state is kept (least recently used are forgotten first)
MAX_STREAMS = 4096


class TranscriberError(RuntimeError):
    """The ASR model cannot be loaded or run."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    language: str | None
    confidence: float | None  # exp(mean token log-prob) of the decoded text
    no_speech_prob: float | None
    frames: np.ndarray | None  # (T, D) float32 encoder frames of this audio
    seconds: float  # wall time spent (the whole batch's, for a batched call)
    frames_window: str = "full"  # the encoder window policy the frames were made with
    fallback: bool = False  # the short-window decode looked like a loop: decoded again at 30 s
    language_probability: float | None = None  # the stream's, when detected
    no_speech: bool = False  # noise, not speech: no text, no emotion label
    text_dropped: str | None = None  # why there is no text: "language" or "no_speech"


def resolve_model_path(name: str) -> str:
    """A model name as a local folder: 'tiny.en' and 'base' ship in wheels (offline)."""
    try:
        return model_folder(name)
    except AsrModelError as e:
        raise TranscriberError(str(e)) from e


class Transcriber:
    """faster-whisper behind a small thread pool; ``await transcribe(audio)`` never blocks the loop."""

    def __init__(self, config: TranscriberConfig | None = None):
        self.config = cfg = config or TranscriberConfig()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = self._load(cfg.model)
        try:
            self.window = WhisperWindow.parse(cfg.encoder_window)
        except AudioError as e:
            raise TranscriberError(str(e)) from e
        self.multilingual = bool(self.model.model.is_multilingual)
        if cfg.language not in (None, "en") and not self.multilingual:
            raise TranscriberError(
                f"asr.language={cfg.language} needs a multilingual model; {cfg.model} is "
                "English-only (set asr.model=base)"
            )
        # English-only model and no language given: a multilingual model detects it
        self.detector = (
            LanguageDetector(self._load(cfg.lid_model), detect_window(cfg.lid_window_s))
            if cfg.language is None and not self.multilingual
            else None
        )
        # The emotion model reads tiny.en's encoder frames; another model's frames are not
        # handed on (the worker then computes tiny.en frames itself: one more encoder pass).
        self.frames_for_emotion = cfg.model == SHIPPED_MODEL
        self.streams: dict[str, StreamLanguage] = {}
        self._streams_lock = threading.Lock()
        self._warned: set[str] = set()
        self._tokenizers: dict[str | None, Any] = {}
        self.fallbacks = 0  # short-window decodes redone at 30 s (see the module docstring)
        self.trimmed = 0  # ... whose 30 s decode ran away too, cut back to the speech's length
        self.no_speech = 0  # segments marked as noise
        self.foreign = 0  # utterances not decoded: another language than the model's
        self._pending = 0  # transcribe() calls not finished yet (the load, for the beam)
        self._speculative = 0  # ... of early transcriptions (not counted as load for the beam)
        # whether the process is loaded beyond this ASR (turn detection lagging the audio); set
        # by the pipeline. Loaded, a stream's optional language measurements wait (DetectorQueue)
        self.load_hint: Callable[[], bool] | None = None
        self.beams: dict[int, int] = {}  # beam width -> utterances decoded with it
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="asr")
        self._lid = DetectorQueue(self.detector.detect) if self.detector is not None else None
        self._batcher: AsrBatcher | None = None
        self.model_id = f"whisper:{cfg.model}"

    def _load(self, name: str) -> Any:
        from faster_whisper import WhisperModel

        cfg = self.config
        path = resolve_model_path(name)
        device = cfg.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        try:
            return WhisperModel(
                path,
                device=device,
                compute_type=cfg.compute_type,
                cpu_threads=cfg.cpu_threads,
                num_workers=cfg.workers,
                local_files_only=True,
            )
        except Exception as e:  # CTranslate2/HF raise many types; one clear message at the boundary
            raise TranscriberError(f"cannot load Whisper model {name!r} ({path}): {e}") from e

    @property
    def batch_sizes(self) -> dict[int, int]:
        """Batches run so far, by size (empty when batching is off or nothing ran)."""
        return dict(self._batcher.sizes) if self._batcher is not None else {}

    # -- language ---------------------------------------------------------------------------
    def _stream(self, key: str) -> StreamLanguage:
        """The language state of one stream; the oldest are forgotten beyond ``MAX_STREAMS``
        (a long-running ``emomon stream`` sees sessions come and go)."""
        with self._streams_lock:
            st = self.streams.pop(key, None)
            if st is None:
                cfg = self.config
                st = StreamLanguage(cfg.lid_settle_s, cfg.lid_recheck_s)
                while len(self.streams) >= MAX_STREAMS:
                    self.streams.pop(next(iter(self.streams)))
            self.streams[key] = st  # most recently used last
            return st

    def _warn_foreign(self, stream: str | None, guess: LanguageGuess) -> None:
        key = stream or ""
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "stream %s speaks %r (p=%.2f), not English: Whisper %s is English-only, so its "
            "utterances get no transcript and their emotion comes from the audio alone; "
            "--set asr.model=base transcribes it",
            stream or "-",
            guess.language,
            guess.probability,
            self.config.model,
        )

    def _tokenizer(self, language: str | None) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        tok = self._tokenizers.get(language)
        if tok is None:
            m = self.model
            tok = Tokenizer(
                m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=language
            )
            self._tokenizers[language] = tok
        return tok

    # -- transcription ----------------------------------------------------------------------
    def transcribe_sync(self, audio: np.ndarray, stream: str | None = None) -> Transcript:
        """Transcribe one utterance (≤ 30 s is one encoder window; longer audio is cut by the segmenter)."""
        return self.transcribe_batch_sync([audio], [stream])[0]

    @property
    def detects_language(self) -> bool:
        return self.config.language is None and (self.detector is not None or self.multilingual)

    def transcribe_batch_sync(
        self,
        audios: list[np.ndarray],
        streams: list[str | None],
        tickets: list[int | None] | None = None,
    ) -> list[Transcript]:
        """Transcribe several utterances with one encoder and one decoder call per window length.

        ``streams`` names each utterance's stream (its language is tracked per stream);
        ``tickets`` their places in it (:meth:`StreamLanguage.ticket`, taken at submission)."""
        t0 = time.perf_counter()
        # Adaptive beam (issue 16.4): the wide beam while the ASR keeps up, greedy under load
        cfg = self.config
        busy = len(audios) > 1 or self._pending > 1
        beam = cfg.busy_beam_size if busy else cfg.beam_size
        audios = [np.asarray(a, dtype=np.float32) for a in audios]
        tickets = tickets or [None] * len(audios)
        sts = [self._stream(s or "") if self.detects_language else None for s in streams]
        ok = [i for i, a in enumerate(audios) if a.size >= SAMPLE_RATE_HZ // 10]
        out: list[Transcript | None] = [None] * len(audios)
        m = self.model
        # noise first: it is neither decoded nor evidence of a stream's language
        noise = {i: pitched_ratio(audios[i]) < cfg.min_pitched_ratio for i in ok}
        # English-only model: the detector runs beside the encoder and decoder (its own thread),
        # so it adds no latency on a free core; what it finds is applied after the decode
        lid: dict[int, Any] = {}
        loaded = cfg.lid_defer_under_load and (
            busy or (self.load_hint is not None and self.load_hint())
        )
        for i in ok:
            st = sts[i]
            if self.detector is None or st is None or noise[i] or not st.wants_measurement():
                continue
            # loaded: a stream whose language is clear is not measured now (DetectorQueue)
            job = self._lid.submit(audios[i], st.may_skip(), defer=loaded and st.may_defer())  # type: ignore[union-attr]
            if job is not None:
                lid[i] = job
        encoded: dict[int, Any] = {}
        groups: list[Any] = []
        if ok:
            enc, groups = encode_batch(m, [audios[i] for i in ok], self.window)
            encoded = dict(zip(ok, enc, strict=True))
        own: dict[int, dict[str, float]] = {}
        if self.multilingual and self.detects_language and ok:
            by_group = [language_probs(m, g) for g in groups]
            own = {i: by_group[encoded[i].group][encoded[i].row] for i in ok}
        # the language each utterance is decoded in: the stream's so far (settled), else the
        # utterance's own (multilingual model); English is decoded before the detector says
        guesses: dict[int, LanguageGuess | None] = {}
        for i in ok:
            st = sts[i]
            cur = st.current() if st is not None and not noise[i] else None
            if i in own and (cur is None or not cur.settled):
                top = max(own[i], key=own[i].__getitem__)
                cur = LanguageGuess(top, own[i][top], True, False)
            guesses[i] = None if i in lid else cur
        langs = {i: self._decode_language(guesses.get(i)) for i in ok}
        todo = [  # an English-only model does not write other languages
            i for i in ok if not noise[i] and (langs[i] == "en" or self.multilingual)
        ]
        decoded = self._decode(
            [audios[i] for i in todo],
            [encoded[i] for i in todo],
            groups,
            [langs[i] for i in todo],
            beam,
        )
        self.beams[beam] = self.beams.get(beam, 0) + len(todo)
        texts: dict[int, tuple[str, float | None, float | None, bool]] = dict(
            zip(todo, decoded, strict=True)
        )
        # the evidence goes into each stream in the order its utterances were spoken
        for i, st in enumerate(sts):
            if st is None:
                continue
            speech = i in ok and not noise[i]
            probs = lid[i].result() if i in lid else own.get(i)
            g = st.add(
                probs if speech else None, audios[i].size / SAMPLE_RATE_HZ * speech, tickets[i]
            )
            if i in lid:  # measured beside the decode: drop what is not English
                guesses[i], langs[i] = g, self._decode_language(g)
                if langs[i] != "en":
                    texts.pop(i, None)
        for i in ok:
            g = guesses.get(i)
            text, conf, nsp, fallback = texts.get(i, ("", None, None, False))
            dropped = None
            if noise[i]:
                self.no_speech += 1
                dropped = "no_speech"
            elif i not in texts and g is not None:
                dropped = "language"
                self.foreign += 1
                self._warn_foreign(streams[i], g)
            out[i] = Transcript(
                text,
                langs[i],
                conf,
                nsp,
                encoded[i].frames if self.frames_for_emotion else None,
                0.0,
                self.window.spec,
                fallback,
                g.probability if g is not None else None,
                noise[i],
                dropped,
            )
        spent = time.perf_counter() - t0
        empty = Transcript(
            "", self.config.language or "en", None, None, None, 0.0, self.window.spec
        )
        return [replace(t or empty, seconds=spent) for t in out]

    def _decode_language(self, guess: LanguageGuess | None) -> str:
        if guess is None:
            return self.config.language or "en"
        return guess.language

    def _decode(
        self,
        audios: list[np.ndarray],
        encoded: list[Any],
        groups: list[Any],
        langs: list[str],
        beam: int,
    ) -> list[tuple[str, float | None, float | None, bool]]:
        """(text, confidence, no-speech probability, fell back) per utterance."""
        if not audios:
            return []
        if self.window.spec == "full":
            return [
                self._decode_full(a, e.features, groups[e.group], e.row, lang, beam=beam)
                for a, e, lang in zip(audios, encoded, langs, strict=True)
            ]
        results: list[tuple[str, float | None, float | None, bool] | None] = [None] * len(audios)
        # one generate call per (window group, language): the prompt names the language
        keys: dict[tuple[int, str], list[int]] = {}
        for j, (e, lang) in enumerate(zip(encoded, langs, strict=True)):
            keys.setdefault((e.group, lang), []).append(j)
        for (g, lang), idx in keys.items():
            tok = self._tokenizer(lang if self.multilingual else None)
            prompt = [*tok.sot_sequence, tok.no_timestamps]
            budget = max(token_budget(audios[j].size / SAMPLE_RATE_HZ) for j in idx)
            view = select_rows(groups[g], [encoded[j].row for j in idx])
            for j, d in zip(
                idx,
                decode_group(self.model, view, [prompt] * len(idx), tok, beam, budget),
                strict=True,
            ):
                if looks_looped(d.text, d.compression_ratio):
                    self.fallbacks += 1
                    _, full_output, _ = encode_whisper(self.model, audios[j], FULL_WINDOW)
                    text, conf, nsp, _ = self._decode_full(
                        audios[j], encoded[j].features, full_output, 0, lang, fallback=True
                    )
                    results[j] = (text, conf, nsp, True)
                else:
                    conf = float(np.exp(d.avg_logprob)) if d.text else None
                    results[j] = (d.text, conf, d.no_speech_prob, False)
        return [r for r in results if r is not None]

    def _decode_full(
        self,
        audio: np.ndarray,
        features: np.ndarray,
        output: Any,
        row: int,
        lang: str,
        fallback: bool = False,
        beam: int | None = None,
    ) -> tuple[str, float | None, float | None, bool]:
        """faster-whisper's own decode with temperature fallback, one utterance: the decode of
        the ``full`` window (with the adaptive ``beam``), or (``fallback``) the redo of a
        short-window decode that looped (with ``asr.beam_size``)."""
        from faster_whisper.transcribe import get_compression_ratio

        m = self.model
        tok = self._tokenizer(lang if self.multilingual else None)
        seconds = audio.size / SAMPLE_RATE_HZ
        # A redo gets the first decode's token budget: it bounds the time a decode that keeps
        # looping at every temperature can take from the other sessions. (A plain full-window
        # decode keeps Whisper's own limit: scripts with many tokens per word need it.)
        budget = min(token_budget(seconds), MAX_FULL_TOKENS) if fallback else None
        options = whisper_options(beam or self.config.beam_size, tok, TEMPERATURES, budget)
        view = select_rows(output, [row])
        segments = list(m.generate_segments(features, tok, options, False, view))
        text = " ".join(s.text.strip() for s in segments).strip()
        # A redo that still loops at every temperature: faster-whisper kept the best of them,
        # which may repeat one sentence far beyond the speech (trim_runaway).
        if fallback and text and looks_looped(text, get_compression_ratio(text)):
            trimmed = trim_runaway(text, seconds)
            if trimmed != text:
                self.trimmed += 1
                log.warning(
                    "a transcript of %.1f s of speech ran away (%d words, %d so far this run): "
                    "cut back to %d words",
                    seconds,
                    len(text.split()),
                    self.trimmed,
                    len(trimmed.split()),
                )
                text = trimmed
        conf = float(np.exp(np.mean([s.avg_logprob for s in segments]))) if segments else None
        nsp = float(max(s.no_speech_prob for s in segments)) if segments else None
        return text, conf, nsp, False

    def idle_for(self, stream: str) -> bool:
        """Whether an early (speculative) transcription of ``stream`` may start now: nothing
        is being transcribed, and the stream's language needs no measurement (a discarded
        early transcription must not count as evidence about it)."""
        if self._pending or self._speculative:
            return False
        if not self.detects_language:
            return True
        with self._streams_lock:
            st = self.streams.get(stream)
        return st is not None and st.settled is not None and not st.wants_measurement()

    async def transcribe(
        self, audio: np.ndarray, stream: str | None = None, speculative: bool = False
    ) -> Transcript:
        """Transcribe one utterance of ``stream``; batched with others waiting at the same time
        unless ``batch_max`` is 1. ``speculative``: an early transcription that may be thrown
        away (started only when :meth:`idle_for` says so); it does not count as load, so an
        utterance that arrives meanwhile still gets the wide beam, and the text of every
        utterance is what it would be without early transcription."""
        loop = asyncio.get_running_loop()
        ticket = self._stream(stream or "").ticket() if self.detects_language else None
        counter = "_speculative" if speculative else "_pending"
        setattr(self, counter, getattr(self, counter) + 1)
        try:
            if self.config.batch_max <= 1:
                return (
                    await loop.run_in_executor(
                        self._pool, self.transcribe_batch_sync, [audio], [stream], [ticket]
                    )
                )[0]
            if self._batcher is None or self._batcher.loop is not loop:
                self._batcher = AsrBatcher(
                    self._run_batch,
                    self._pool,
                    self.config.workers,
                    self.config.batch_max,
                    self.config.batch_wait_ms,
                )
            return await self._batcher.submit(audio, (stream, ticket))
        finally:
            setattr(self, counter, getattr(self, counter) - 1)

    def _run_batch(
        self, audios: list[np.ndarray], metas: list[tuple[str | None, int | None]]
    ) -> list[Transcript]:
        return self.transcribe_batch_sync(audios, [m[0] for m in metas], [m[1] for m in metas])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._lid is not None:
            self._lid.close()
