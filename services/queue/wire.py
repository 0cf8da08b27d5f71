"""How an ``Utterance`` sits in one Redis Stream entry: ``{"v": "1", "u": <Utterance.to_wire()>}``
plus, optionally, ``"f"``: the Whisper encoder frames of the ASR pass.

The entry carries its own envelope version ``v`` beside the utterance's binary format (which has
its own version byte) so that a future envelope (say, compressed PCM or a reference to object
storage instead of inline audio) can be told apart *before* parsing the payload, and so that a
worker that meets a newer envelope dead-letters it with a clear reason instead of misreading it.
No pickle: a stream is a network boundary and unpickling is code execution.

Why ``f``: the emotion model's audio branch reads the Whisper encoder frames that transcription
already computed (``Utterance.whisper_frames``, which ``to_wire`` leaves out). Without them a
worker runs the encoder again per utterance, which on CPU costs far more than the rest of the
model (docs/DISTRIBUTED.md, "Figures"). The frames travel as float16 (the precision the training
cache stores them in), ``b"F16" + rows + cols + data``, about 38 KB per second of speech. The field
is additive: a worker that does not know it ignores it and recomputes. ``fw`` names the encoder
window policy the frames were made with (``"10+8"``, ``"full"``; absent means ``"full"``): a
worker whose checkpoint was trained on another policy's frames recomputes them.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from redis.typing import EncodableT, FieldT

from emomon.streamer.utterance import Utterance, UtteranceDecodeError

WIRE_VERSION = "1"
FIELD_VERSION = "v"
FIELD_UTTERANCE = "u"
FIELD_FRAMES = "f"
FIELD_FRAMES_WINDOW = "fw"  # the encoder window policy of "f" (absent = "full", the old recipe)
_FRAMES_MAGIC = b"F16"


class WireDecodeError(UtteranceDecodeError):
    """A stream entry is not a readable utterance envelope; ``reason`` is a short machine tag.

    Reasons: ``missing-version``, ``unsupported-version``, ``missing-payload``, ``bad-payload``.
    The message says what was wrong for the dead-letter stream and the logs.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode(utt: Utterance, with_frames: bool = True) -> dict[FieldT, EncodableT]:
    """The fields of the stream entry for ``utt`` (frames included when it has them and asked)."""
    fields: dict[FieldT, EncodableT] = {
        FIELD_VERSION: WIRE_VERSION.encode(),
        FIELD_UTTERANCE: utt.to_wire(),
    }
    if with_frames and utt.whisper_frames is not None:
        fields[FIELD_FRAMES] = encode_frames(utt.whisper_frames)
        fields[FIELD_FRAMES_WINDOW] = (utt.whisper_window or "full").encode()
    return fields


def encode_frames(frames: np.ndarray) -> bytes:
    """``(T, D)`` float frames as ``b"F16" + uint32 T + uint32 D + float16 little-endian data``."""
    a = np.ascontiguousarray(frames, dtype="<f2")
    if a.ndim != 2:
        raise ValueError(f"frames must be (T, D), got shape {a.shape}")
    return _FRAMES_MAGIC + struct.pack(">II", *a.shape) + a.tobytes()


def decode_frames(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_frames`, as float32; :class:`WireDecodeError` if malformed."""
    if len(data) < 11 or data[:3] != _FRAMES_MAGIC:
        raise WireDecodeError("bad-payload", "frames field: bad magic")
    rows, cols = struct.unpack(">II", data[3:11])
    body = data[11:]
    if len(body) != 2 * rows * cols:
        raise WireDecodeError(
            "bad-payload",
            f"frames field: header says {rows}x{cols} float16, body has {len(body)} bytes",
        )
    return np.frombuffer(body, dtype="<f2").reshape(rows, cols).astype(np.float32)


def _field(fields: Mapping[Any, Any], name: str) -> bytes | str | None:
    # redis-py returns bytes keys unless decode_responses is set; accept both.
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value


def decode(fields: Mapping[Any, Any]) -> Utterance:
    """Parse one stream entry; raise :class:`WireDecodeError` saying what is wrong."""
    version = _field(fields, FIELD_VERSION)
    if version is None:
        raise WireDecodeError(
            "missing-version", f"entry has no {FIELD_VERSION!r} field (fields: {_names(fields)})"
        )
    v = version.decode(errors="replace") if isinstance(version, bytes) else str(version)
    if v != WIRE_VERSION:
        raise WireDecodeError(
            "unsupported-version",
            f"envelope version {v!r} is not supported (this worker reads {WIRE_VERSION!r}); upgrade the worker",
        )
    payload = _field(fields, FIELD_UTTERANCE)
    if payload is None:
        raise WireDecodeError("missing-payload", f"entry has no {FIELD_UTTERANCE!r} field")
    if isinstance(payload, str):
        raise WireDecodeError(
            "bad-payload", "payload was decoded as text; use a client without decode_responses"
        )
    try:
        utt = Utterance.from_wire(payload)
    except UtteranceDecodeError as e:
        raise WireDecodeError("bad-payload", str(e)) from e
    frames = _field(fields, FIELD_FRAMES)
    if frames is not None:
        if isinstance(frames, str):
            raise WireDecodeError("bad-payload", "frames field was decoded as text")
        window = _field(fields, FIELD_FRAMES_WINDOW)
        if isinstance(window, bytes):
            window = window.decode(errors="replace")
        utt = utt.with_updates(
            whisper_frames=decode_frames(frames), whisper_window=str(window or "full")
        )
    return utt


def _names(fields: Mapping[Any, Any]) -> list[str]:
    return sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in fields)[
        :10
    ]


__all__ = [
    "FIELD_FRAMES",
    "FIELD_UTTERANCE",
    "FIELD_VERSION",
    "WIRE_VERSION",
    "WireDecodeError",
    "decode",
    "decode_frames",
    "encode",
    "encode_frames",
]
