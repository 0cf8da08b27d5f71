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
# Whisper makes 50 frames a second of at most 1280 values; 60 s of the largest model fits.
MAX_FRAME_ROWS = 3_000
MAX_FRAME_COLS = 2_048
MAX_WINDOW_CHARS = 32


class WireDecodeError(UtteranceDecodeError):
    """A stream entry is not a readable utterance envelope; ``reason`` is a short machine tag.

    Reasons: ``missing-version``, ``unsupported-version``, ``missing-payload``, ``bad-payload``
    (which includes a header that fails :class:`~emomon.streamer.utterance_schema.UtteranceHeader`:
    wrong types, non-finite or negative times, oversized strings, timings or PCM). The message is
    one line saying what was wrong, for the dead-letter stream and the logs.
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
    """Inverse of :func:`encode_frames`, as float32; :class:`WireDecodeError` if malformed.

    The shape is checked against :data:`MAX_FRAME_ROWS` / :data:`MAX_FRAME_COLS` and the body
    length before any array is built, and the values must be finite (float16 can carry NaN/inf).
    """
    if not isinstance(data, bytes | bytearray) or len(data) < 11 or data[:3] != _FRAMES_MAGIC:
        raise WireDecodeError("bad-payload", "frames field: bad magic")
    rows, cols = struct.unpack(">II", data[3:11])
    if rows > MAX_FRAME_ROWS or not 0 < cols <= MAX_FRAME_COLS:
        raise WireDecodeError(
            "bad-payload",
            f"frames field: shape {rows}x{cols} is outside {MAX_FRAME_ROWS}x1..{MAX_FRAME_COLS}",
        )
    body_len = len(data) - 11
    if body_len != 2 * rows * cols:
        raise WireDecodeError(
            "bad-payload",
            f"frames field: header says {rows}x{cols} float16, body has {body_len} bytes",
        )
    frames = np.frombuffer(data, dtype="<f2", offset=11).reshape(rows, cols)
    if not np.isfinite(frames).all():
        raise WireDecodeError("bad-payload", "frames field: non-finite values")
    return frames.astype(np.float32)


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
    v = v[:16]  # echoed in the reason; a hostile entry can make it any size
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
        if not isinstance(frames, bytes):
            raise WireDecodeError("bad-payload", "frames field is not bytes")
        utt = utt.with_updates(whisper_frames=decode_frames(frames), whisper_window=_window(fields))
    return utt


def _window(fields: Mapping[Any, Any]) -> str:
    """The ``fw`` field as a short text; absent means ``"full"``."""
    window = _field(fields, FIELD_FRAMES_WINDOW)
    if window is None:
        return "full"
    if not isinstance(window, bytes | str) or not 0 < len(window) <= MAX_WINDOW_CHARS:
        raise WireDecodeError("bad-payload", f"{FIELD_FRAMES_WINDOW!r} field is not a short text")
    return window.decode(errors="replace") if isinstance(window, bytes) else window


def _names(fields: Mapping[Any, Any]) -> list[str]:
    names = (k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in fields)
    return sorted(n[:40] for n in names)[:10]


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
