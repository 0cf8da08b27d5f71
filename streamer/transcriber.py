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
utterance is decoded again from a full 30 s encoder pass with the usual temperature fallback.
The emotion frames always come from the configured window, so they match the recipe the
emotion checkpoint was trained with.

Around the decode (issues 15.5, 18.4, 16.2):

* **language** — each stream's language is detected (:mod:`emomon.streamer.language`); with an
  English-only model, non-English speech is not decoded (no English nonsense), its utterance
  carries the detected language and no text, and one WARNING per stream says so;
* **noise** — a segment with hardly any pitched frames (:mod:`emomon.streamer.speech_check`)
  is marked ``no_speech`` and loses any text Whisper wrote on it;
* **batching** — utterances of several sessions that wait together share one encoder and one
  decoder call (:mod:`emomon.streamer.asr_batch`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from emomon.model.audio import FULL_WINDOW, WhisperWindow, encode_whisper
from emomon.model.errors import AudioError
from emomon.streamer.asr_batch import AsrBatcher, decode_group, encode_batch, select_rows
from emomon.streamer.asr_models import SHIPPED_MODEL, AsrModelError, model_folder
from emomon.streamer.config import TranscriberConfig
from emomon.streamer.language import (
    LanguageDetector,
    LanguageGuess,
    StreamLanguage,
    language_probs,
)
from emomon.streamer.speech_check import pitched_ratio
from emomon.streamer.utterance import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)


class TranscriberError(RuntimeError):
    """The ASR model cannot be loaded or run."""


TEMPERATURES = [0.0, 0.2, 0.4]
#: gzip compression ratio above which a decode counts as repetitive (faster-whisper's default).
LOOP_COMPRESSION_RATIO = 2.4


def token_budget(duration_s: float) -> int:
    """A bound on the tokens of a first decode of ``duration_s`` of speech (fast speech is ~5
    words, ~7 tokens, per second): it only bounds the time a decode that loops can take."""
    return int(16 + 10 * duration_s)


def looks_looped(text: str, compression_ratio: float) -> bool:
    """A decode that repeats itself: highly compressible text, or one three-word phrase said
    three times or more (real speech of one utterance rarely does; a loop always does)."""
    if compression_ratio > LOOP_COMPRESSION_RATIO:
        return True
    words = re.findall(r"[\w']+", text.lower())
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 2):
        key = tuple(words[i : i + 3])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= 3:
            return True
    return False


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
            LanguageDetector(self._load(cfg.lid_model))
            if cfg.language is None and not self.multilingual
            else None
        )
        # The emotion model reads tiny.en's encoder frames; another model's frames are not
        # handed on (the worker then computes tiny.en frames itself: one more encoder pass).
        self.frames_for_emotion = cfg.model == SHIPPED_MODEL
        self.streams: dict[str, StreamLanguage] = {}
        self._warned: set[str] = set()
        self._tokenizers: dict[str | None, Any] = {}
        self.fallbacks = 0  # short-window decodes redone at 30 s (see the module docstring)
        self.no_speech = 0  # segments marked as noise
        self.foreign = 0  # utterances not decoded: another language than the model's
        self._pending = 0  # transcribe() calls not finished yet (the load, for the beam)
        self.beams: dict[int, int] = {}  # beam width -> utterances decoded with it
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="asr")
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
        st = self.streams.get(key)
        if st is None:
            cfg = self.config
            st = self.streams[key] = StreamLanguage(cfg.lid_settle_s, cfg.lid_recheck_s)
        return st

    def _guess(
        self, audio: np.ndarray, stream: str | None, own: dict[str, float] | None
    ) -> LanguageGuess | None:
        """The language of this utterance's stream (None: not detected, the configured one).

        ``own``: the ASR model's own language probabilities (multilingual model)."""
        if self.config.language is not None:
            return None
        st = self._stream(stream or "")
        dur = audio.size / SAMPLE_RATE_HZ
        if own is not None:
            return st.add(own, dur)
        if self.detector is None:
            return None
        probs = self.detector.detect(audio) if st.wants_measurement() else None
        return st.add(probs, dur)

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

    def transcribe_batch_sync(
        self, audios: list[np.ndarray], streams: list[str | None]
    ) -> list[Transcript]:
        """Transcribe several utterances with one encoder and one decoder call per window length.

        ``streams`` names each utterance's stream (its language is tracked per stream)."""
        t0 = time.perf_counter()
        # Adaptive beam (issue 16.4): the wide beam while the ASR keeps up, greedy under load
        cfg = self.config
        busy = len(audios) > 1 or self._pending > 1
        beam = cfg.busy_beam_size if busy else cfg.beam_size
        audios = [np.asarray(a, dtype=np.float32) for a in audios]
        ok = [i for i, a in enumerate(audios) if a.size >= SAMPLE_RATE_HZ // 10]
        out: list[Transcript | None] = [None] * len(audios)
        m = self.model
        if ok:
            encoded, groups = encode_batch(m, [audios[i] for i in ok], self.window)
            # noise first: it neither decodes nor counts as evidence of a stream's language
            noise = [pitched_ratio(audios[i]) < self.config.min_pitched_ratio for i in ok]
            own: list[dict[str, float] | None] = [None] * len(ok)
            if self.multilingual and self.config.language is None:
                by_group = [language_probs(m, g) for g in groups]
                own = [by_group[e.group][e.row] for e in encoded]
            guesses = [
                None if noise[k] else self._guess(audios[i], streams[i], own[k])
                for k, i in enumerate(ok)
            ]
            langs = [self._decode_language(g) for g in guesses]
            todo = [  # an English-only model does not write other languages
                k
                for k in range(len(ok))
                if not noise[k] and (langs[k] == "en" or self.multilingual)
            ]
            decoded = self._decode(
                [audios[ok[k]] for k in todo],
                [encoded[k] for k in todo],
                groups,
                [langs[k] for k in todo],
                beam,
            )
            self.beams[beam] = self.beams.get(beam, 0) + len(todo)
            texts: dict[int, tuple[str, float | None, float | None, bool]] = dict(
                zip(todo, decoded, strict=True)
            )
            for k, i in enumerate(ok):
                g = guesses[k]
                text, conf, nsp, fallback = texts.get(k, ("", None, None, False))
                dropped = None
                if noise[k]:
                    self.no_speech += 1
                    dropped = "no_speech"
                elif k not in texts and g is not None:
                    dropped = "language"
                    self.foreign += 1
                    self._warn_foreign(streams[i], g)
                out[i] = Transcript(
                    text,
                    langs[k],
                    conf,
                    nsp,
                    encoded[k].frames if self.frames_for_emotion else None,
                    0.0,
                    self.window.spec,
                    fallback,
                    g.probability if g is not None else None,
                    noise[k],
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
                self._decode_full(a, e.features, groups[e.group], e.row, lang)
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
                        audios[j], encoded[j].features, full_output, 0, lang
                    )
                    results[j] = (text, conf, nsp, True)
                else:
                    conf = float(np.exp(d.avg_logprob)) if d.text else None
                    results[j] = (d.text, conf, d.no_speech_prob, False)
        return [r for r in results if r is not None]

    def _decode_full(
        self, audio: np.ndarray, features: np.ndarray, output: Any, row: int, lang: str
    ) -> tuple[str, float | None, float | None, bool]:
        """faster-whisper's own decode with temperature fallback, one utterance."""
        m = self.model
        tok = self._tokenizer(lang if self.multilingual else None)
        options = self._options(tok, TEMPERATURES, None)
        view = select_rows(output, [row])
        segments = list(m.generate_segments(features, tok, options, False, view))
        text = " ".join(s.text.strip() for s in segments).strip()
        conf = float(np.exp(np.mean([s.avg_logprob for s in segments]))) if segments else None
        nsp = float(max(s.no_speech_prob for s in segments)) if segments else None
        return text, conf, nsp, False

    def _options(
        self, tokenizer: Any, temperatures: list[float], max_new_tokens: int | None
    ) -> Any:
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        return TranscriptionOptions(
            beam_size=self.config.beam_size,
            best_of=1,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=-1.0,
            no_speech_threshold=0.6,
            compression_ratio_threshold=LOOP_COMPRESSION_RATIO,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=temperatures,
            initial_prompt=None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            without_timestamps=True,
            max_initial_timestamp=1.0,
            word_timestamps=False,
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=max_new_tokens,
            clip_timestamps=[0.0],
            hallucination_silence_threshold=None,
            hotwords=None,
        )

    async def transcribe(self, audio: np.ndarray, stream: str | None = None) -> Transcript:
        """Transcribe one utterance of ``stream``; batched with others waiting at the same time
        unless ``batch_max`` is 1."""
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            if self.config.batch_max <= 1:
                return await loop.run_in_executor(self._pool, self.transcribe_sync, audio, stream)
            if self._batcher is None or self._batcher.loop is not loop:
                self._batcher = AsrBatcher(
                    self.transcribe_batch_sync,
                    self._pool,
                    self.config.workers,
                    self.config.batch_max,
                    self.config.batch_wait_ms,
                )
            return await self._batcher.submit(audio, stream)
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
