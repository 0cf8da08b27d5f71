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
from pydantic import ValidationError

from emomon.streamer.utterance_schema import (
    MAX_HEADER_BYTES,
    SAMPLE_RATE_HZ,
    UtteranceHeader,
    one_line,
)

UTTERANCE_WIRE_VERSION = 1
_MAGIC = b"EMU"  # 3 bytes, then 1 byte version, then 4-byte big-endian header length


class UtteranceDecodeError(ValueError):
    """Bytes that are not a valid serialised ``Utterance`` (garbage, truncated, other version)."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """One speaker's stretch of speech, cut by the segmenter and transcribed.

    Times ``start_s``/``end_s`` are session time in seconds (one clock for every channel of
    the session); ``origin_wall`` is the wall-clock time of session time 0 when the source
    knows it. ``end_wall`` is the wall-clock time (``time.time()``) at which the end of speech
    arrived (packet arrival, capture, real-time playout); ``live`` is False for a replay faster
    than real time, where no arrival time exists and events claim no latency. ``pcm`` is
    16 kHz mono int16.
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
    origin_wall: float | None = None
    live: bool = True
    # noise, not speech (streamer/speech_check.py): the worker gives it the no_speech outcome
    no_speech: bool = False
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
        if not self.no_speech:  # absent = False: workers of earlier builds read the entry too
            del header["no_speech"]
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
        data = bytes(data)  # a copy only when a view came in; Redis replies are bytes already
        if len(data) < 8 or data[:3] != _MAGIC:
            raise UtteranceDecodeError("not an emomon utterance (bad magic)")
        version = data[3]
        if version != UTTERANCE_WIRE_VERSION:
            raise UtteranceDecodeError(
                f"unsupported utterance wire version {version} (this build reads {UTTERANCE_WIRE_VERSION})"
            )
        (hlen,) = struct.unpack(">I", data[4:8])
        if hlen > MAX_HEADER_BYTES:
            raise UtteranceDecodeError(f"header of {hlen} bytes is over {MAX_HEADER_BYTES}")
        if 8 + hlen > len(data):
            raise UtteranceDecodeError("truncated header")
        try:
            raw = json.loads(data[8 : 8 + hlen])
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise UtteranceDecodeError(f"header is not JSON: {e}") from e
        if not isinstance(raw, dict):
            raise UtteranceDecodeError("header is not a JSON object")
        try:
            header = UtteranceHeader.model_validate(raw)
        except ValidationError as e:
            raise UtteranceDecodeError(f"invalid header fields: {one_line(e)}") from e
        # The header's sample count is bounded by the schema, so a consistent body is bounded too.
        body_len = len(data) - 8 - hlen
        if body_len != 2 * header.pcm_samples:
            raise UtteranceDecodeError(
                f"truncated or oversized PCM: header says {header.pcm_samples} samples, "
                f"body has {body_len} bytes"
            )
        pcm = np.frombuffer(data, dtype="<i2", offset=8 + hlen).astype(np.int16)
        fields = header.model_dump(exclude={"pcm_samples", "sample_rate_hz"})
        return cls(pcm=pcm, **fields)


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
