"""End-of-turn model: at the first short pause, ask whether the utterance is complete.

The VAD alone must wait its whole hang-over (``vad.hangover_ms``) before it may close an
utterance, because a speaker pausing mid-sentence sounds the same as one who has finished. A
model of *how* speech ends (intonation, a finished phrase) can tell them apart sooner: at the
first ``vad.end_of_turn_pause_ms`` of non-speech the segmenter asks it; when the probability of a
complete turn reaches ``vad.end_of_turn_threshold`` the utterance closes at once, otherwise the
VAD waits for the full hang-over as before.

The model is smart-turn v3.2 (Daily, BSD-2-Clause), an ONNX classifier over Whisper-style
log-mel features of the last 8 s of the turn. It ships inside the ``pipecat-ai`` wheel; the wheel
is installed without its dependencies and the file is located through the package metadata,
so pipecat itself is never imported.

Input the model expects (read from its graph and the wheel's own inference code): 16 kHz mono,
the last 8 s of the turn (left-padded with zeros when shorter), the waveform scaled to zero
mean and unit variance, then Whisper's front end: 25 ms Hann windows every 10 ms (n_fft 400,
hop 160), 80 Slaney mel bins, log10 floored at 8 decades below the maximum, ``(x + 4) / 4``;
800 frames. Output: one probability per item that the turn is complete.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emomon.streamer.config import SegmenterConfig
from emomon.streamer.utterance import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from emomon.streamer.segmenter import Segmenter, SpeechSegment

log = logging.getLogger(__name__)

DIST = "pipecat-ai"
DIST_VERSION = "1.14.0"
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
WINDOW_S = 8  # the model sees the last 8 s of the turn
N_FRAMES = 800  # log-mel frames in the window (100 per second)
N_MELS = 80
DECISION_TIMES = 10_000  # latest decisions' durations kept (a live stream runs for days)


class EndOfTurnModelError(RuntimeError):
    """The end-of-turn model cannot be found, loaded or run."""


def _missing(why: str) -> EndOfTurnModelError:
    return EndOfTurnModelError(
        f"the end-of-turn model {why}: pip install --no-deps {DIST}=={DIST_VERSION} "
        "(scripts/install.sh does this), or turn it off with --set vad.end_of_turn_pause_ms=0"
    )


def model_path() -> Path:
    """The smart-turn ONNX file inside the installed ``pipecat-ai`` wheel (not imported)."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise _missing(f"ships in the '{DIST}' wheel, which is not installed") from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise _missing(f"is not in the installed '{DIST}' wheel ({dist.version}) at {MODEL_FILE}")
    return path


@functools.cache
def _extractor():  # noqa: ANN202 - faster_whisper has no type hints
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=N_MELS, chunk_length=WINDOW_S)


def turn_features(audio: np.ndarray) -> np.ndarray:
    """(80, 800) float32 log-mel features of the last 8 s of ``audio`` (float, 16 kHz)."""
    n = WINDOW_S * SAMPLE_RATE_HZ
    x = np.asarray(audio, dtype=np.float32).reshape(-1)[-n:]
    x = np.concatenate([np.zeros(n - x.size, np.float32), x])  # left-pad: the end is what counts
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    # faster-whisper's Whisper front end (centred STFT, last frame dropped): 800 frames for 8 s
    feats = _extractor()(x, padding=0)
    return np.ascontiguousarray(feats[:, :N_FRAMES], dtype=np.float32)


class EndOfTurnModel:
    """smart-turn v3.2 on ONNX Runtime; ``complete_probability`` is thread-safe."""

    def __init__(self, path: Path | None = None, threads: int = 1):
        import onnxruntime as ort

        path = path or model_path()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # warnings about unused initialisers are not ours to fix
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - a damaged file: one line, not a traceback
            raise EndOfTurnModelError(f"cannot load the end-of-turn model {path}: {e}") from e
        inp = self._session.get_inputs()[0]
        if list(inp.shape[1:]) != [N_MELS, N_FRAMES]:
            raise EndOfTurnModelError(
                f"{path} expects input {inp.shape}, not (batch, {N_MELS}, {N_FRAMES})"
            )
        self._input = inp.name
        self._lock = threading.Lock()
        self.calls = 0

    def complete_probability(self, audio: np.ndarray) -> float:
        """Probability that the turn in ``audio`` (float or int16, 16 kHz) has ended."""
        return float(self.complete_probabilities([audio])[0])

    def complete_probabilities(self, audios: list[np.ndarray]) -> np.ndarray:
        """One probability per clip, in one batched pass."""
        clips = [a.astype(np.float32) / 32768.0 if a.dtype == np.int16 else a for a in audios]
        feats = np.stack([turn_features(a) for a in clips])
        try:
            (out,) = self._session.run(None, {self._input: feats})[:1]
        except Exception as e:  # noqa: BLE001
            raise EndOfTurnModelError(f"end-of-turn model failed: {e}") from e
        with self._lock:
            self.calls += len(clips)
        return np.asarray(out, dtype=np.float32).reshape(len(clips), -1)[:, 0]


@functools.cache
def shared_end_of_turn() -> EndOfTurnModel:
    """One end-of-turn model per process, shared by all sessions."""
    return EndOfTurnModel()


class EndOfTurn:
    """Answers the segmenter's turn questions: the hook between the VAD and the model.

    ``close_early(segmenter)`` runs after each chunk the segmenter was fed; it asks the model
    (in a worker thread, so other sessions go on) about each new pause and returns the
    segments it closed. A model failure is logged and counted, and the VAD's hang-over decides
    as if the model were off.
    """

    def __init__(self, config: SegmenterConfig, model: EndOfTurnModel | None = None):
        self.threshold = config.end_of_turn_threshold
        self.enabled = config.end_of_turn_pause_ms > 0
        self.model = (model or shared_end_of_turn()) if self.enabled else None
        self.asked = 0
        self.closed = 0
        self.errors = 0
        # seconds per decision (features + model), the latest DECISION_TIMES
        self.model_s: deque[float] = deque(maxlen=DECISION_TIMES)

    async def close_early(self, segmenter: Segmenter) -> list[SpeechSegment]:
        out: list[SpeechSegment] = []
        if self.model is None:
            return out
        for q in segmenter.turn_questions():
            t0 = time.perf_counter()
            try:
                p = await asyncio.to_thread(self.model.complete_probability, q.pcm)
            except EndOfTurnModelError as e:
                self.errors += 1
                log.error("end-of-turn model failed (%d so far): %s", self.errors, e)
                continue
            self.asked += 1
            self.model_s.append(time.perf_counter() - t0)
            if p >= self.threshold and (seg := segmenter.close_turn(q)) is not None:
                self.closed += 1
                out.append(seg)
        return out
