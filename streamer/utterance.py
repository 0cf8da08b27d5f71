"""The ``Utterance``: the contract between the streamer half and the fusion worker.

It is versioned and has a pickle-free wire format (a small JSON header followed by the raw
16 kHz mono int16 PCM) so that it can cross Redis Streams between processes and hosts.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 16_000
UTTERANCE_WIRE_VERSION = 1
_MAGIC = b"EMU"  # 3 bytes, then 1 byte version, then 4-byte big-endian header length


class UtteranceDecodeError(ValueError):
    """Bytes that are not a valid serialised ``Utterance`` (garbage, truncated, other version)."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """One speaker's stretch of speech, cut by the segmenter and transcribed.

    Times ``start_s``/``end_s`` are stream time in seconds from the start of the session;
    ``end_wall`` is the wall-clock time (``time.time()``) at which end of speech was detected,
    used for end-to-end latency. ``pcm`` is 16 kHz mono int16.
    """

    session: str
    speaker: str
    channel: str
    utterance_id: str
    start_s: float
    end_s: float
    end_wall: float
    pcm: np.ndarray = field(repr=False)
    text: str = ""
    language: str | None = None
    asr_confidence: float | None = None
    speaker_provisional: bool = False
    # Stage timings in seconds, filled as the utterance moves down the pipeline.
    timings: dict[str, float] = field(default_factory=dict)
    # Whisper-encoder frames (T, D) float32 from the ASR pass; in-process only, never on the wire.
    whisper_frames: np.ndarray | None = field(default=None, repr=False, compare=False)
    # The encoder window policy those frames were made with (emomon.model.audio.WhisperWindow
    # spec, e.g. "10+8" or "full"); a worker whose checkpoint expects another recomputes them.
    whisper_window: str | None = field(default=None, compare=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def audio_float32(self) -> np.ndarray:
        """PCM as float32 in [-1, 1], the form the ASR and emotion models take."""
        return self.pcm.astype(np.float32) / 32768.0

    def with_updates(self, **changes: Any) -> Utterance:
        return replace(self, **changes)

    # -- wire format ------------------------------------------------------------------------
    def to_wire(self) -> bytes:
        """Serialise as ``b"EMU" + version + len(header) + JSON header + int16 PCM``."""
        header = {
            k: v
            for k, v in asdict_shallow(self).items()
            if k not in ("pcm", "whisper_frames", "whisper_window")
        }
        header["pcm_samples"] = int(self.pcm.shape[0])
        header["sample_rate_hz"] = SAMPLE_RATE_HZ
        hdr = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        pcm = np.ascontiguousarray(self.pcm, dtype="<i2").tobytes()
        return _MAGIC + bytes([UTTERANCE_WIRE_VERSION]) + struct.pack(">I", len(hdr)) + hdr + pcm

    @classmethod
    def from_wire(cls, data: bytes) -> Utterance:
        """Parse :meth:`to_wire` output; raise :class:`UtteranceDecodeError` saying what is wrong."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UtteranceDecodeError(f"payload is {type(data).__name__}, not bytes")
        data = bytes(data)
        if len(data) < 8 or data[:3] != _MAGIC:
            raise UtteranceDecodeError("not an emomon utterance (bad magic)")
        version = data[3]
        if version != UTTERANCE_WIRE_VERSION:
            raise UtteranceDecodeError(
                f"unsupported utterance wire version {version} (this build reads {UTTERANCE_WIRE_VERSION})"
            )
        (hlen,) = struct.unpack(">I", data[4:8])
        if 8 + hlen > len(data):
            raise UtteranceDecodeError("truncated header")
        try:
            header = json.loads(data[8 : 8 + hlen])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UtteranceDecodeError(f"header is not JSON: {e}") from e
        if not isinstance(header, dict):
            raise UtteranceDecodeError("header is not a JSON object")
        body = data[8 + hlen :]
        n = header.pop("pcm_samples", None)
        rate = header.pop("sample_rate_hz", None)
        if rate != SAMPLE_RATE_HZ:
            raise UtteranceDecodeError(f"sample rate {rate!r} is not {SAMPLE_RATE_HZ}")
        if not isinstance(n, int) or n < 0 or len(body) != 2 * n:
            raise UtteranceDecodeError(
                f"truncated or oversized PCM: header says {n!r} samples, body has {len(body)} bytes"
            )
        pcm = np.frombuffer(body, dtype="<i2").astype(np.int16)
        try:
            return cls(pcm=pcm, **header)
        except TypeError as e:
            raise UtteranceDecodeError(f"header fields do not match Utterance: {e}") from e


def asdict_shallow(u: Utterance) -> dict[str, Any]:
    """Like ``dataclasses.asdict`` but without deep-copying the PCM array."""
    return {f: getattr(u, f) for f in u.__dataclass_fields__}


__all__ = [
    "SAMPLE_RATE_HZ",
    "UTTERANCE_WIRE_VERSION",
    "Utterance",
    "UtteranceDecodeError",
    "asdict_shallow",
]
