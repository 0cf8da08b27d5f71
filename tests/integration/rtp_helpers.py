"""Test support for RTP: ffmpeg as a real RTP sender, a lossy UDP relay, and audio comparison.

Imported by ``tests/integration/test_rtp*.py`` and ``benchmarks/bench_rtp.py``.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import correlate, resample_poly

from emomon.streamer.sources.base import AudioChunk
from emomon.streamer.sources.rtp import RtpSource, is_rtcp

REPO = Path(__file__).resolve().parents[2]
CALL_WAV = REPO / "tests" / "data" / "phone-call-2spk.wav"
FFMPEG = shutil.which("ffmpeg")
SR = 16_000

# ffmpeg output options per payload, and the UDP packet size that makes 20 ms packets
# (12-byte header + 160 G.711 bytes / 640 L16 bytes), as a PBX would send.
CODECS: dict[str, tuple[list[str], int]] = {
    "pcmu": (["-ar", "8000", "-ac", "1", "-acodec", "pcm_mulaw"], 12 + 160),
    "pcma": (["-ar", "8000", "-ac", "1", "-acodec", "pcm_alaw"], 12 + 160),
    "l16": (["-ar", "16000", "-ac", "1", "-acodec", "pcm_s16be"], 12 + 640),
    # G.722: PT 9, 16 kHz audio on the 8000 Hz RTP clock, 160 bytes per 20 ms
    "g722": (["-ar", "16000", "-ac", "1", "-acodec", "g722"], 12 + 160),
    # Opus: a dynamic PT (OPUS_PT, announced by opus_sdp()), one 20 ms frame per packet
    "opus": (
        ["-ar", "48000", "-ac", "1", "-acodec", "libopus", "-b:a", "32k", "-payload_type", "111"],
        1400,
    ),
}
OPUS_PT = 111
# RTP clock rate per codec (what the timestamps count)
CLOCK_HZ = {"pcmu": 8000, "pcma": 8000, "l16": 16000, "g722": 8000, "opus": 48000}


def opus_sdp(path: Path) -> Path:
    """The SDP a SIP peer would send for the Opus sender above (RFC 7587: always /48000/2)."""
    path.write_text(f"v=0\nm=audio 0 RTP/AVP {OPUS_PT}\na=rtpmap:{OPUS_PT} opus/48000/2\n")
    return path


def load_call() -> np.ndarray:
    """The test recording as int16 at 16 kHz."""
    with wave.open(str(CALL_WAV)) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def reference(codec: str, start_s: float, dur_s: float) -> np.ndarray:
    """What the receiver should get back: the excerpt, band-limited through 8 kHz for G.711."""
    x = load_call()[int(start_s * SR) : int((start_s + dur_s) * SR)].astype(np.float64)
    if codec in ("pcmu", "pcma", "g722"):  # G.722's upper band is coarse: compare the lower
        x = resample_poly(resample_poly(x, 1, 2), 2, 1)
    return x


def free_port_pair(host: str = "127.0.0.1") -> int:
    """An even UDP port P with P+1 free too (RTP + RTCP), as RFC 3550 §11 recommends."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            p = s.getsockname()[1] & ~1
        if p >= 65534 or p < 1024:
            continue
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind((host, p))
                b.bind((host, p + 1))
        except OSError:
            continue
        return p
    raise RuntimeError("no free UDP port pair on loopback")


def ffmpeg_rtp_args(
    port: int,
    codec: str,
    start_s: float,
    dur_s: float,
    *,
    host: str = "127.0.0.1",
    ssrc: int | None = None,
    seq: int | None = None,
    sdp_file: Path | None = None,
    realtime: bool = True,
    send_bye: bool = True,
    packets_20ms: bool = True,
    wav: Path = CALL_WAV,
) -> list[str]:
    """The ffmpeg command that sends an excerpt of ``wav`` as RTP (what docs/RTP.md recommends)."""
    assert FFMPEG is not None
    opts, pkt = CODECS[codec]
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin"]
    if realtime:
        args.append("-re")
    args += ["-ss", f"{start_s}", "-t", f"{dur_s}", "-i", str(wav), *opts, "-f", "rtp"]
    if send_bye:
        args += ["-rtpflags", "send_bye"]
    if ssrc is not None:
        args += ["-ssrc", str(ssrc - (1 << 32) if ssrc >= 1 << 31 else ssrc)]
    if seq is not None:
        args += ["-seq", str(seq)]
    if sdp_file is not None:
        args += ["-sdp_file", str(sdp_file)]
    # Without pkt_size ffmpeg fills 1472-byte datagrams (126 ms of G.711): fine, but unlike a PBX.
    args.append(f"rtp://{host}:{port}" + (f"?pkt_size={pkt}" if packets_20ms else ""))
    return args


async def run_ffmpeg(args: Sequence[str], delay_s: float = 0.0) -> None:
    if delay_s:
        await asyncio.sleep(delay_s)
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}"
        )


@dataclass
class Received:
    """Chunks per channel with the monotonic time each was yielded."""

    chunks: dict[str, list[AudioChunk]] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)

    def audio(self, channel: str) -> np.ndarray:
        return np.concatenate([c.pcm for c in self.chunks[channel]])


async def collect(src: RtpSource, streams: int | None = None) -> Received:
    """Consume ``src`` until it ends, or until ``streams`` streams have sent their final chunk
    (then close it: tests need not wait for an idle exit that a slow ffmpeg start could trip)."""
    out = Received()
    finals = 0
    async for c in src.chunks():
        out.chunks.setdefault(c.channel, []).append(c)
        out.times.setdefault(c.channel, []).append(time.monotonic())
        finals += c.final
        if streams is not None and finals >= streams:
            await src.close()
    return out


@dataclass(frozen=True)
class Match:
    lag_samples: int  # >0: received audio is late relative to the reference
    snr_db: float
    corr: float


def compare(received: np.ndarray, ref: np.ndarray, max_lag: int = 1600) -> Match:
    """Align by cross-correlation (±``max_lag``), then SNR and correlation over the overlap."""
    r = received.astype(np.float64)
    n = min(r.size, ref.size)
    xc = correlate(r[:n], ref[:n], mode="full", method="fft")
    mid = n - 1
    window = xc[mid - max_lag : mid + max_lag + 1]
    lag = int(np.argmax(window)) - max_lag
    if lag >= 0:
        a, b = r[lag:n], ref[: n - lag]
    else:
        a, b = r[: n + lag], ref[-lag:n]
    m = min(a.size, b.size)
    a, b = a[:m], b[:m]
    noise = np.sum((a - b) ** 2)
    snr = float(10 * np.log10(np.sum(b**2) / noise)) if noise > 0 else float("inf")
    corr = float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return Match(lag, snr, corr)


class LossyRelay(asyncio.DatagramProtocol):
    """A UDP forwarder that drops, duplicates and delays (reorders) RTP packets with a seeded RNG,
    and logs exactly what it did. RTCP is forwarded untouched (to the receiver's RTP port: rtcp-mux).
    """

    def __init__(
        self,
        target: tuple[str, int],
        seed: int,
        *,
        drop: float = 0.05,
        duplicate: float = 0.03,
        reorder: float = 0.10,
        max_delay_s: float = 0.05,
    ) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.drop, self.duplicate, self.reorder, self.max_delay_s = (
            drop,
            duplicate,
            reorder,
            max_delay_s,
        )
        self.forwarded: list[int] = []  # sequence numbers sent on, in send order, copies included
        self.dropped: list[int] = []
        self.delayed: list[int] = []
        self.rtcp = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Bound on the RTP port and its RTCP neighbour: both forward through the first socket.
        if self.transport is None:
            self.transport = transport  # type: ignore[assignment]

    def _send(self, data: bytes, seq: int | None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if seq is not None:
            self.forwarded.append(seq)
        self.transport.sendto(data, self.target)

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if is_rtcp(data):
            self.rtcp += 1
            # Hold RTCP back like the slowest packet so a BYE never overtakes the last audio.
            asyncio.get_running_loop().call_later(self.max_delay_s, self._send, data, None)
            return
        seq = int.from_bytes(data[2:4], "big")
        r = self.rng.random()
        if r < self.drop:
            self.dropped.append(seq)
            return
        loop = asyncio.get_running_loop()
        if r < self.drop + self.reorder:
            self.delayed.append(seq)
            loop.call_later(self.rng.uniform(0.02, self.max_delay_s), self._send, data, seq)
        else:
            self._send(data, seq)
        if self.rng.random() < self.duplicate:
            loop.call_later(self.rng.uniform(0.0, self.max_delay_s), self._send, data, seq)

    def expected_counts(self) -> tuple[int, int]:
        """(lost, duplicate) as RFC 3550 defines them from this relay's log: sequence numbers
        between the first and last ever forwarded that were never forwarded; extra copies."""
        ext: list[int] = []
        base = self.forwarded[0]
        for s in self.forwarded:
            d = (s - base) % 65536
            ext.append(base + (d - 65536 if d >= 32768 else d))
        distinct = set(ext)
        lost = (max(distinct) - min(distinct) + 1) - len(distinct)
        return lost, len(ext) - len(distinct)


def write_wav(path: Path, pcm: np.ndarray) -> Path:
    """16 kHz mono int16 WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return path


def speech_with_gaps(parts: Sequence[tuple[float, float] | float]) -> np.ndarray:
    """Excerpts of the call ``(start_s, dur_s)`` and digital silences (a float: seconds)."""
    call = load_call()
    out = []
    for p in parts:
        if isinstance(p, tuple):
            out.append(call[int(p[0] * SR) : int((p[0] + p[1]) * SR)])
        else:
            out.append(np.zeros(int(p * SR), dtype=np.int16))
    return np.concatenate(out)


class DtxRelay(asyncio.DatagramProtocol):
    """What a phone with silence suppression sends, made from an ffmpeg stream: packets whose
    media time falls in one of ``silences`` (seconds from the first packet) are not sent, the
    sequence numbers are renumbered without holes (RFC 3551: DTX skips timestamps, not
    sequence numbers), the first packet of a talkspurt gets the marker bit, and with ``cn`` a
    comfort-noise packet (PT 13, RFC 3389) opens each silence. RTCP goes through the RTP
    socket (rtcp-mux). Every packet sent is logged: ``(wall time, sequence, timestamp, PT)``.

    ``pace_s``: send each packet at its media time plus this delay, 20 ms apart as a phone
    does, instead of in ffmpeg's 128 ms bursts (ffmpeg ``-re`` sends ahead of time, so a small
    delay is enough to have every packet in hand when its time comes).
    """

    def __init__(
        self,
        target: tuple[str, int],
        clock_hz: int,
        silences: Sequence[tuple[float, float]],
        *,
        cn: bool = True,
        pace_s: float | None = None,
    ) -> None:
        self.target, self.clock_hz, self.silences, self.cn = target, clock_hz, silences, cn
        self.pace_s = pace_s
        self._t0: float | None = None
        self.sent: list[tuple[float, int, int, int]] = []
        self.suppressed = 0
        self.cn_sent = 0
        self.rtcp = 0
        self._ts0: int | None = None
        self._seq: int | None = None
        self._silent = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            self.transport = transport  # type: ignore[assignment]

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, self.target)

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if is_rtcp(data):
            self.rtcp += 1
            if self.pace_s is None:
                self._send(data)
            else:  # after the audio it follows
                asyncio.get_running_loop().call_later(self.pace_s + 0.1, self._send, data)
            return
        seq, ts = int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:8], "big")
        if self._ts0 is None:
            self._ts0, self._seq, self._t0 = ts, seq, time.monotonic()
        t = ((ts - self._ts0) % (1 << 32)) / self.clock_hz
        if self.pace_s is not None:
            assert self._t0 is not None
            loop = asyncio.get_running_loop()
            delay = self._t0 + self.pace_s + t - time.monotonic()
            loop.call_later(max(0.0, delay), self._relay, data, ts, t)
            return
        self._relay(data, ts, t)

    def _relay(self, data: bytes, ts: int, t: float) -> None:
        if any(a <= t < b for a, b in self.silences):
            if not self._silent and self.cn:
                self._out(bytes([0x80, 13]) + data[2:12] + bytes([60]), ts, 13)  # -60 dBov
                self.cn_sent += 1
            self._silent = True
            self.suppressed += 1
            return
        b1 = data[1] | (0x80 if self._silent else 0)  # marker: the talkspurt starts again
        self._silent = False
        self._out(bytes([data[0], b1]) + data[2:], ts, data[1] & 0x7F)

    def _out(self, data: bytes, ts: int, pt: int) -> None:
        assert self._seq is not None
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        packet = data[:2] + seq.to_bytes(2, "big") + data[4:]
        self.sent.append((time.time(), seq, ts, pt))
        self._send(packet)

    def send_time_of(self, media_s: float) -> float:
        """Wall time the packet holding media time ``media_s`` (from the first packet) was sent."""
        assert self._ts0 is not None
        best = None
        for wall, _, ts, pt in self.sent:
            if pt == 13:
                continue
            if ((ts - self._ts0) % (1 << 32)) / self.clock_hz <= media_s + 1e-9:
                best = wall
        assert best is not None
        return best


async def start_relay(
    loop: asyncio.AbstractEventLoop, proto: asyncio.DatagramProtocol, port: int
) -> list[asyncio.BaseTransport]:
    """Bind ``proto`` on ``port`` and ``port + 1`` (where ffmpeg sends RTP and RTCP)."""
    return [
        (await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", p)))[0]
        for p in (port, port + 1)
    ]
