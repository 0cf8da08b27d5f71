"""Microphone input (``--source mic[:DEVICE]``) through PortAudio (``sounddevice``).

PortAudio calls back on its own thread with blocks of ``block_ms``; the callback only copies the
block into a bounded queue on the event loop (``call_soon_threadsafe``), so neither side ever
waits for the other. When the consumer falls behind, the newest block is dropped and counted
(``stats["dropped_blocks"]``) rather than letting memory grow. Each input channel is its own
channel downstream (a multi-channel interface with one person per microphone needs no speaker
clustering); a single channel may be a room, so it is marked as possibly multi-speaker.

``sounddevice`` is imported lazily: a machine without PortAudio (``libportaudio2``) can still run
every other source, and gets a one-line :class:`SourceError` naming the fix only when it asks
for the microphone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import numpy as np

from emomon.streamer.sources.base import AudioChunk, SourceError
from emomon.streamer.sources.g711 import StreamResampler, to_int16
from emomon.streamer.utterance import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

QUEUE_BLOCKS = 250  # 5 s of 20 ms blocks between the PortAudio thread and the loop
_NO_PORTAUDIO = (
    "microphone unavailable: the PortAudio library is not installed "
    "(install it: apt-get install libportaudio2, or brew install portaudio)"
)


def _sounddevice() -> ModuleType:
    """Import ``sounddevice``, turning a missing PortAudio into a :class:`SourceError`."""
    try:
        import sounddevice
    except (OSError, ImportError) as e:
        raise SourceError(_NO_PORTAUDIO) from e
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Every PortAudio device with input channels: index, name, host API, channels, default rate.

    ``default`` marks the system default input. Raises :class:`SourceError` without PortAudio.
    """
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as e:
        raise SourceError(f"cannot list audio devices: {e}") from e
    try:
        default_in = int(sd.default.device[0])
    except (TypeError, ValueError, IndexError):
        default_in = -1
    out = []
    for d in devices:
        if int(d.get("max_input_channels", 0)) <= 0:
            continue
        api = d.get("hostapi", 0)
        out.append(
            {
                "index": int(d["index"]),
                "name": str(d["name"]),
                "hostapi": str(hostapis[api]["name"]) if 0 <= api < len(hostapis) else str(api),
                "max_input_channels": int(d["max_input_channels"]),
                "default_samplerate": float(d.get("default_samplerate", 0.0)),
                "default": int(d["index"]) == default_in,
            }
        )
    return out


def _resolve_device(sd: ModuleType, device: str | int | None) -> dict[str, Any]:
    """Find the input device by index, exact/substring name, or the default; one-line errors."""
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device)
    if isinstance(device, str) and not device.strip():
        device = None
    try:
        info = sd.query_devices(device, "input")
    except (sd.PortAudioError, ValueError) as e:
        try:
            n_inputs = sum(1 for d in sd.query_devices() if d.get("max_input_channels", 0) > 0)
        except sd.PortAudioError:
            n_inputs = 0
        if n_inputs == 0:
            raise SourceError(
                "no audio input device found: connect a microphone (or check the container has "
                "/dev/snd and PortAudio sees it); see `emomon devices`"
            ) from e
        which = "the default input" if device is None else f"input device {device!r}"
        raise SourceError(
            f"cannot use {which}: {e}; pick one of the {n_inputs} inputs listed by `emomon devices` "
            "with --source mic:INDEX or mic:NAME"
        ) from e
    return dict(info)


class MicSource:
    """Capture from a PortAudio input device; chunks of ``block_ms`` at 16 kHz, one per channel."""

    def __init__(
        self,
        device: str | int | None = None,
        channels: int | None = None,
        samplerate: int | None = None,
        block_ms: int = 20,
    ) -> None:
        if channels is not None and channels < 1:
            raise SourceError(f"mic channels must be >= 1, got {channels}")
        if not 5 <= block_ms <= 200:
            raise SourceError(f"mic block_ms must be 5..200, got {block_ms}")
        self._sd = _sounddevice()
        info = _resolve_device(self._sd, device)
        self.device_index = int(info["index"])
        self.device_name = str(info["name"])
        max_ch = int(info.get("max_input_channels", 1))
        self.channels = channels or 1
        if self.channels > max_ch:
            raise SourceError(
                f"input device {self.device_name!r} has {max_ch} channel(s), {self.channels} requested"
            )
        self.samplerate = int(
            samplerate or round(float(info.get("default_samplerate") or SAMPLE_RATE_HZ))
        )
        self.block_frames = max(1, self.samplerate * block_ms // 1000)
        self.name = f"mic:{self.device_name}"
        self.multi_speaker_channels = self.channels == 1
        self.stats = {"blocks": 0, "dropped_blocks": 0, "input_overflows": 0}
        self._queue: asyncio.Queue[tuple[np.ndarray, float] | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None
        self._closed = False
        self.origin_wall: float | None = None  # wall-clock time of the first captured sample

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: copy the block and hand it to the loop. Must never block."""
        if status and getattr(status, "input_overflow", False):
            self.stats["input_overflows"] += 1
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or self._closed:
            return
        block = np.array(indata, dtype=np.int16, copy=True).reshape(frames, self.channels)
        try:
            loop.call_soon_threadsafe(self._enqueue, (block, time.time()))
        except RuntimeError:
            return  # the loop is closed: we are shutting down

    def _enqueue(self, block: tuple[np.ndarray, float] | None) -> None:
        assert self._queue is not None
        try:
            self._queue.put_nowait(block)
        except asyncio.QueueFull:
            self.stats["dropped_blocks"] += 1

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=QUEUE_BLOCKS)

        def open_stream() -> Any:
            stream = self._sd.InputStream(
                device=self.device_index,
                channels=self.channels,
                samplerate=self.samplerate,
                dtype="int16",
                blocksize=self.block_frames,
                callback=self._callback,
            )
            stream.start()
            return stream

        try:
            self._stream = await asyncio.to_thread(open_stream)
        except (self._sd.PortAudioError, ValueError) as e:
            raise SourceError(
                f"cannot open input device {self.device_name!r} at {self.samplerate} Hz, "
                f"{self.channels} ch: {e} (try --source mic:OTHER or another sample rate)"
            ) from e
        log.info("capturing %s: %d ch at %d Hz", self.device_name, self.channels, self.samplerate)

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        """Yield one chunk per channel per captured block, until :meth:`close`."""
        await self._open()
        assert self._queue is not None
        resamplers = [
            StreamResampler(self.samplerate, SAMPLE_RATE_HZ) for _ in range(self.channels)
        ]
        emitted = [0] * self.channels
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    break
                block, captured = item
                self.stats["blocks"] += 1
                if self.origin_wall is None:
                    self.origin_wall = captured - block.shape[0] / self.samplerate
                for ch in range(self.channels):
                    pcm = to_int16(resamplers[ch].process(block[:, ch]))
                    if pcm.size:
                        yield AudioChunk(
                            str(ch), emitted[ch] / SAMPLE_RATE_HZ, pcm, wall_end=captured
                        )
                        emitted[ch] += pcm.size
            for ch in range(self.channels):
                tail = to_int16(resamplers[ch].flush())
                yield AudioChunk(str(ch), emitted[ch] / SAMPLE_RATE_HZ, tail, final=True)
        finally:
            await self._stop()

    async def _stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            t0 = time.monotonic()
            await asyncio.to_thread(_stop_stream, stream)
            log.debug("microphone stream closed in %.3f s", time.monotonic() - t0)

    async def close(self) -> None:
        """Stop capturing; a running :meth:`chunks` yields the final chunks and ends."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None:
            # The end marker must get through even when the queue is full.
            while self._queue.full():
                self._queue.get_nowait()
                self.stats["dropped_blocks"] += 1
            self._queue.put_nowait(None)
        else:
            await self._stop()


def _stop_stream(stream: Any) -> None:
    stream.stop()
    stream.close()
