"""MicSource: the real error paths of this (device-less) machine, and the capture path through the
real callback → queue → resampler → chunk code with a fake ``sounddevice`` that plays a tone."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
from typing import Any

import numpy as np
import pytest

from emomon.streamer.sources import mic
from emomon.streamer.sources.base import AudioSource, SourceError
from emomon.streamer.sources.mic import MicSource, list_input_devices


def _real_portaudio_has_no_input() -> bool:
    try:
        return not list_input_devices()
    except SourceError:
        return True


@pytest.mark.skipif(
    not _real_portaudio_has_no_input(), reason="this machine has a real input device"
)
def test_no_device_is_a_one_line_source_error() -> None:
    with pytest.raises(SourceError) as e:
        MicSource()
    msg = str(e.value)
    assert "\n" not in msg and "no audio input device" in msg and "emomon devices" in msg
    with pytest.raises(SourceError, match="no audio input device"):
        MicSource("USB Headset")


def test_no_portaudio_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SourceError, match="libportaudio2"):
        MicSource()
    with pytest.raises(SourceError, match="PortAudio"):
        list_input_devices()


# -- a fake PortAudio with two inputs ----------------------------------------------------------------
class FakePortAudioError(Exception):
    pass


DEVICES = [
    {
        "index": 0,
        "name": "Built-in Output",
        "hostapi": 0,
        "max_input_channels": 0,
        "default_samplerate": 48000.0,
    },
    {
        "index": 1,
        "name": "USB Conference Mic",
        "hostapi": 0,
        "max_input_channels": 2,
        "default_samplerate": 48000.0,
    },
    {
        "index": 2,
        "name": "Headset",
        "hostapi": 0,
        "max_input_channels": 1,
        "default_samplerate": 44100.0,
    },
]


class FakeInputStream:
    """Calls the callback from its own thread with a 440 Hz tone on ch0 and 1 kHz on ch1."""

    instances: list[FakeInputStream] = []

    def __init__(
        self,
        *,
        device: int,
        channels: int,
        samplerate: int,
        dtype: str,
        blocksize: int,
        callback: Any,
    ):
        assert dtype == "int16"
        self.device, self.channels, self.samplerate, self.blocksize = (
            device,
            channels,
            samplerate,
            blocksize,
        )
        self.callback = callback
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.blocks_sent = 0
        FakeInputStream.instances.append(self)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and self.blocks_sent < 50:  # 1 s at most
            t = (n + np.arange(self.blocksize)) / self.samplerate
            block = np.stack(
                [8000 * np.sin(2 * np.pi * f * t) for f in (440, 1000)[: self.channels]], axis=1
            )
            status = types.SimpleNamespace(input_overflow=self.blocks_sent == 3)
            self.callback(block.astype(np.int16), self.blocksize, None, status)
            n += self.blocksize
            self.blocks_sent += 1
            time.sleep(0.002)  # faster than real time: keeps the test short

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()

    def close(self) -> None:
        pass


def make_fake_sd() -> types.ModuleType:
    sd = types.ModuleType("sounddevice")
    sd.PortAudioError = FakePortAudioError  # type: ignore[attr-defined]
    sd.default = types.SimpleNamespace(device=[2, 0])  # type: ignore[attr-defined]
    sd.InputStream = FakeInputStream  # type: ignore[attr-defined]

    def query_devices(device: Any = None, kind: str | None = None) -> Any:
        if device is None and kind is None:
            return DEVICES
        if device is None:
            device = 2
        if isinstance(device, int):
            if not 0 <= device < len(DEVICES):
                raise FakePortAudioError(f"Error querying device {device}")
            d = DEVICES[device]
        else:
            hits = [d for d in DEVICES if device.lower() in d["name"].lower()]
            if len(hits) != 1:
                raise ValueError(f"No input device matching {device!r}")
            d = hits[0]
        if kind == "input" and d["max_input_channels"] == 0:
            raise ValueError(f"Not an input device: {d['name']!r}")
        return d

    sd.query_devices = query_devices  # type: ignore[attr-defined]
    sd.query_hostapis = lambda: [{"name": "ALSA"}]  # type: ignore[attr-defined]
    return sd


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    sd = make_fake_sd()
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    FakeInputStream.instances.clear()
    return sd


def test_list_input_devices(fake_sd: types.ModuleType) -> None:
    devs = list_input_devices()
    assert [d["index"] for d in devs] == [1, 2]
    assert devs[1] == {
        "index": 2,
        "name": "Headset",
        "hostapi": "ALSA",
        "max_input_channels": 1,
        "default_samplerate": 44100.0,
        "default": True,
    }


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("Nope", "matching 'Nope'"),
        (7, "input device 7"),
        ("Built-in Output", "Not an input"),
        ("0", "input device 0"),
    ],
)
def test_bad_device_is_a_one_line_error_listing_the_way_out(
    fake_sd: types.ModuleType, device: Any, match: str
) -> None:
    with pytest.raises(SourceError, match=match) as e:
        MicSource(device)
    assert "\n" not in str(e.value) and "emomon devices" in str(e.value)


def test_too_many_channels(fake_sd: types.ModuleType) -> None:
    with pytest.raises(SourceError, match="has 1 channel"):
        MicSource("Headset", channels=2)


def capture(src: MicSource, seconds_of_audio: float) -> dict[str, list]:
    async def main() -> dict[str, list]:
        out: dict[str, list] = {}
        async for c in src.chunks():
            out.setdefault(c.channel, []).append(c)
            if c.end_s >= seconds_of_audio and not c.final and c.channel == "0":
                await src.close()
        return out

    return asyncio.run(asyncio.wait_for(main(), 10))


def test_mono_capture_by_default_device_resampled_to_16k(fake_sd: types.ModuleType) -> None:
    src = MicSource()  # the default input: Headset, 44.1 kHz
    assert isinstance(src, AudioSource) and src.multi_speaker_channels and src.samplerate == 44100
    out = capture(src, 0.5)
    chunks = out["0"]
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    pcm = np.concatenate([c.pcm for c in chunks])
    assert all(
        b.start_s == pytest.approx(a.end_s) for a, b in zip(chunks, chunks[1:], strict=False)
    )
    # A clean 440 Hz tone at 16 kHz: the resampler kept it, without clicks at block boundaries.
    seg = pcm[800:8000].astype(float)
    spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    assert abs(np.argmax(spec) * 16000 / seg.size - 440) < 5
    ref = 8000 * np.sin(2 * np.pi * 440 * np.arange(pcm.size) / 16000)
    assert np.max(np.abs(pcm[800:8000] - ref[800:8000])) < 120
    assert src.stats["input_overflows"] == 1 and src.stats["dropped_blocks"] == 0


def test_two_channels_are_two_channels_by_name_at_48k(fake_sd: types.ModuleType) -> None:
    src = MicSource("usb conference", channels=2, block_ms=20)
    assert not src.multi_speaker_channels and src.samplerate == 48000 and src.block_frames == 960
    out = capture(src, 0.3)
    assert set(out) == {"0", "1"}
    for ch, f in (("0", 440), ("1", 1000)):
        pcm = np.concatenate([c.pcm for c in out[ch]]).astype(float)[800:4800]
        spec = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
        assert abs(np.argmax(spec) * 16000 / pcm.size - f) < 5
    assert FakeInputStream.instances[0].device == 1
    assert FakeInputStream.instances[0]._stop.is_set()  # the PortAudio stream was stopped on close


def test_slow_consumer_drops_blocks_and_counts_them(
    fake_sd: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mic, "QUEUE_BLOCKS", 5)
    src = MicSource("Headset")

    async def main() -> int:
        n = 0
        async for _ in src.chunks():
            if n == 0:
                await asyncio.sleep(0.3)  # the fake sends ~50 blocks meanwhile
            n += 1
            if n == 4:
                await src.close()
        return n

    asyncio.run(asyncio.wait_for(main(), 10))
    assert src.stats["dropped_blocks"] > 0


def test_emomon_devices_command(
    fake_sd: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    from emomon.services.cli import main

    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "USB Conference Mic" in out and "* " in out and "Built-in Output" not in out
    assert main(["devices", "--json"]) == 0
    assert '"name": "Headset"' in capsys.readouterr().out
