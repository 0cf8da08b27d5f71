"""Payload decoding for live sources: G.711 (μ-law, A-law), L16, and a streaming resampler.

G.711 tables live in the leaf module ``emomon.model.g711`` (training passes clips through the
same codec); decoding a packet is one fancy-indexing call.

Live audio arrives in small pieces (20 ms packets, 20 ms mic blocks), and resampling each piece
on its own clicks at every boundary. :class:`StreamResampler` keeps the filter state across
calls and compensates the filter's delay, so that the output is the same as resampling the
whole signal at once (``scipy.signal.resample_poly``) — the unit tests check exactly that.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import firwin, upfirdn

from emomon.model.g711 import ALAW_TABLE, ULAW_TABLE, decode_alaw, decode_ulaw

__all__ = [
    "ALAW_TABLE",
    "ULAW_TABLE",
    "StreamResampler",
    "decode_alaw",
    "decode_l16",
    "decode_ulaw",
    "to_int16",
]


def decode_l16(payload: bytes, channels: int = 1) -> np.ndarray:
    """Big-endian 16-bit PCM (RFC 3551 L16) → int16 mono; several channels are averaged.

    One RTP stream is one participant, so a stereo L16 stream is mixed down rather than split.
    Raises ``ValueError`` when the length is not a whole number of sample frames.
    """
    frame = 2 * channels
    if len(payload) % frame:
        raise ValueError(f"L16 payload of {len(payload)} bytes is not a multiple of {frame}")
    pcm = np.frombuffer(payload, dtype=">i2")
    if channels == 1:
        return pcm.astype(np.int16)
    return pcm.reshape(-1, channels).astype(np.int32).mean(axis=1).astype(np.int16)


class StreamResampler:
    """Rational-ratio polyphase FIR resampler with state carried across calls.

    The filter is the one ``scipy.signal.resample_poly`` designs (Kaiser window, beta 5,
    half-length ``10 * max(up, down)``), and output sample ``k`` is centred on input time
    ``k * in_rate / out_rate`` as there. Because the filter looks ahead, the output lags the
    input by ``delay_in_samples`` input samples; :meth:`flush` pads zeros to release that tail
    when the stream ends. Feeding a signal in any split gives the same samples as feeding it
    whole.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        g = gcd(in_rate, out_rate)
        self.in_rate, self.out_rate = in_rate, out_rate
        self.up, self.down = out_rate // g, in_rate // g
        self.identity = self.up == self.down
        max_rate = max(self.up, self.down)
        half_len = 0 if self.identity else 10 * max_rate
        if self.identity:
            h = np.ones(1)
        else:
            h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        self._half_len = half_len
        self._h = h
        # Polyphase taps h[p], h[p+up], ... for the integer-upsampling fast path.
        self._phases: list[np.ndarray] | None = None
        if self.down == 1 and 1 < self.up <= 8:
            hp = np.concatenate([h, np.zeros(-len(h) % self.up)])  # equal-length phases
            self._phases = [hp[p :: self.up] for p in range(self.up)]
        # Input history (float64), newest last; `_hist_start` is the global index of _hist[0].
        # The block must start at an aligned index (see _produce): zeros stand for "before the stream".
        s0 = 0
        while (s0 * self.up - half_len) % self.down:
            s0 -= 1
        self._hist = np.zeros(-s0, dtype=np.float64)
        self._hist_start = s0
        self._n_in = 0  # input samples received so far
        self._n_out = 0  # output samples produced so far

    @property
    def delay_in_samples(self) -> float:
        """Lookahead of the filter, in input samples (the latency it adds)."""
        return self._half_len / self.up

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed input samples (any numeric dtype); return the output samples now complete (float64)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        self._n_in += x.shape[0]
        if self.identity:
            self._n_out += x.shape[0]
            return x
        self._hist = np.concatenate([self._hist, x])
        return self._produce(self._n_in)

    def flush(self) -> np.ndarray:
        """Release the outputs held back by the filter lookahead (as if zeros followed)."""
        if self.identity:
            return np.zeros(0)
        total_out = -(-self._n_in * self.up // self.down)  # outputs covering the input span
        lookahead = -(-self._half_len // self.up) + 1
        self._hist = np.concatenate([self._hist, np.zeros(lookahead)])
        return self._produce(self._n_in + lookahead, limit=total_out)

    def _produce(self, available: int, limit: int | None = None) -> np.ndarray:
        """Outputs ``_n_out ..`` whose inputs are all in (global input index < ``available``).

        Output k is ``sum_n h[k*down + half - n*up] * x[n]`` (resample_poly's alignment). It is
        computed with ``upfirdn`` over the history block starting at global input ``s0``, chosen
        so that ``s0*up - half`` is a multiple of ``down``: block output j is then global output
        ``j + (s0*up - half) / down``.
        """
        up, down, half = self.up, self.down, self._half_len
        last_k = ((available - 1) * up - half) // down if available > 0 else -1
        if limit is not None:
            last_k = min(last_k, limit - 1)
        if last_k < self._n_out:
            return np.zeros(0)
        s0 = self._hist_start
        block = self._hist
        if self._phases is not None:
            # Integer upsampling (8 kHz G.711 -> 16 kHz): one short np.convolve per phase beats
            # upfirdn's per-call setup. y[k] = (h_p * x)[m] with k + half = m*up + p.
            out = np.empty(last_k + 1 - self._n_out)
            for j in range(min(up, out.size)):
                u = self._n_out + j + half
                m0 = u // up - s0
                count = len(range(j, out.size, up))
                conv = np.convolve(block, self._phases[u % up])
                out[j::up] = conv[m0 : m0 + count]
        else:
            offset = (s0 * up - half) // down  # global output index of block output 0
            y = upfirdn(self._h, block, up, down)
            out = y[self._n_out - offset : last_k + 1 - offset]
        self._n_out = last_k + 1
        self._trim()
        return out

    def _trim(self) -> None:
        """Drop history no future output needs, keeping the block alignment; memory stays bounded."""
        up, down, half = self.up, self.down, self._half_len
        # Oldest input any future output (k >= _n_out) touches: n >= (k*down + half - len(h) + 1) / up.
        oldest = (self._n_out * down + half - len(self._h) + 1) // up
        keep_from = oldest - down  # leave room to step back to an aligned start
        # Aligned start: (s0*up - half) % down == 0. Step down from keep_from to the nearest one.
        while (keep_from * up - half) % down:
            keep_from -= 1
        if keep_from > self._hist_start:
            self._hist = self._hist[keep_from - self._hist_start :]
            self._hist_start = keep_from


def to_int16(x: np.ndarray) -> np.ndarray:
    """Round and clip float samples to int16."""
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
