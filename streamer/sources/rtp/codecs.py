"""Payload decoders, looked up by encoding name: G.711 and L16 by table, G.722 and Opus by PyAV.

A decoder turns one packet's payload into mono int16 samples at its format's
:attr:`~emomon.streamer.sources.sdp.PayloadFormat.audio_rate_hz`, or raises ``ValueError`` for a
payload it cannot read. G.711 and L16 are stateless; G.722 (ADPCM) and Opus carry state from
packet to packet, so each stream gets its own decoder instance from :func:`make_decoder`.

PyAV wraps FFmpeg's own decoders (``g722``, ``opus``), which are in every FFmpeg build; it is
imported only when a stream needs one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import numpy as np

from emomon.streamer.sources.g711 import decode_alaw, decode_l16, decode_ulaw, to_int16
from emomon.streamer.sources.sdp import PayloadFormat


class PayloadDecoder(Protocol):
    def __call__(self, payload: bytes, /) -> np.ndarray: ...


class AvDecoder:
    """One FFmpeg audio decoder (through PyAV) for one stream: packets in, mono int16 out."""

    def __init__(self, codec: str, rate_hz: int) -> None:
        import av

        self._av = av
        self.ctx: Any = cast(Any, av.AudioCodecContext.create(codec, "r"))  # typed loosely
        self.ctx.sample_rate = rate_hz
        self.ctx.layout = "mono"  # one RTP stream is one participant: stereo Opus is mixed down

    def __call__(self, payload: bytes) -> np.ndarray:
        if not payload:
            raise ValueError("empty payload")
        try:
            frames = self.ctx.decode(self._av.Packet(payload))
        except (self._av.error.FFmpegError, ValueError) as e:  # type: ignore[attr-defined]
            raise ValueError(f"{self.ctx.name} decoder: {e}") from e
        parts = []
        for frame in frames:
            a = frame.to_ndarray()
            if a.ndim == 2:
                a = a.mean(axis=0) if a.shape[0] > 1 and a.shape[0] <= 8 else a.reshape(-1)
            if a.dtype.kind == "f":
                a = to_int16(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0) * 32768.0)
            parts.append(a.astype(np.int16, copy=False))
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(parts)


def _stateless(fn: PayloadDecoder) -> Callable[[PayloadFormat], PayloadDecoder]:
    return lambda _fmt: fn


# encoding name -> factory of a decoder for one stream
DECODERS: dict[str, Callable[[PayloadFormat], PayloadDecoder]] = {
    "PCMU": _stateless(decode_ulaw),
    "PCMA": _stateless(decode_alaw),
    "L16": lambda fmt: lambda payload: decode_l16(payload, fmt.channels),
    "G722": lambda fmt: AvDecoder("g722", fmt.audio_rate_hz),
    "OPUS": lambda fmt: AvDecoder("opus", fmt.audio_rate_hz),
}


def preload() -> None:
    """Import PyAV now (seconds on a busy machine): at start-up, not on the event loop when the
    first G.722 or Opus packet arrives, where it would stall every stream."""
    import av  # noqa: F401


def make_decoder(fmt: PayloadFormat) -> PayloadDecoder:
    """A fresh decoder for ``fmt`` (``KeyError`` when the encoding is not audio emomon decodes)."""
    return DECODERS[fmt.encoding](fmt)


__all__ = ["DECODERS", "AvDecoder", "PayloadDecoder", "make_decoder", "preload"]
