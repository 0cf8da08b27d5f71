"""Test support for the Redis transport: a real ``redis-server`` on a free loopback port,
synthetic utterances, the fusion worker (real model, or a skip), and JSONL readers.

Imported by ``tests/integration/test_redis*.py`` (the fixtures are re-exported there).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emomon.services.events import EmotionEvent
from emomon.streamer.utterance import SAMPLE_RATE_HZ, Utterance

REPO = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server")
CHECKPOINT = REPO / "model" / "checkpoints" / "default"

TEXTS = (
    "I can't believe you did that, this is wonderful!",
    "Well, I guess we'll see what happens.",
    "Get out of here right now.",
    "Oh no, that's terrible news.",
    "Okay.",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1; ``data_dir`` turns on AOF so a restart keeps data."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        extra: Sequence[str] = (),
        ping_auth: tuple[str, str] | None = None,
        config_file: Path | None = None,
    ) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.data_dir = data_dir
        self.extra = list(extra)  # more redis-server arguments (e.g. ACL users)
        self.config_file = config_file  # read first; the arguments above override it
        self.ping_auth = ping_auth  # (user, password) when the default user may not PING
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [REDIS_SERVER, *([str(self.config_file)] if self.config_file else [])]
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.data_dir is not None:
            args += ["--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if self.ping_auth is not None:
                        user, password = self.ping_auth
                        s.sendall(f"AUTH {user} {password}\r\n".encode())
                        s.recv(64)
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` per test (import ``redis_server_fixture`` into a test module)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def synthetic_utterance(
    i: int, session: str = "sess-test", seconds: float = 0.5, speaker: str | None = None
) -> Utterance:
    """A short utterance: a quiet tone with a bit of noise, one of a few sentences, and stand-in
    Whisper encoder frames (50 per second, 384-d) as the ASR pass would have attached."""
    n = int(seconds * SAMPLE_RATE_HZ)
    rng = np.random.default_rng(i)
    frames = rng.normal(0, 0.5, (max(1, int(seconds * 50)), 384)).astype(np.float32)
    t = np.arange(n) / SAMPLE_RATE_HZ
    pcm = (3000 * np.sin(2 * np.pi * (150 + 10 * (i % 7)) * t) + rng.normal(0, 300, n)).astype(
        np.int16
    )
    return Utterance(
        session=session,
        speaker=speaker or f"S{i % 2}",
        channel="0",
        utterance_id=f"{session}-{i:05d}-{uuid.uuid4().hex[:6]}",
        start_s=i * 1.0,
        end_s=i * 1.0 + seconds,
        end_wall=time.time(),
        pcm=pcm,
        text=TEXTS[i % len(TEXTS)],
        language="en",
        asr_confidence=0.9,
        whisper_frames=frames,
        whisper_window=checkpoint_window(),  # as the streamer tags them (asr.encoder_window=auto)
    )


def checkpoint_dir() -> Path:
    """The configured checkpoint (``EMOMON_WORKER__CHECKPOINT``, as for the CLI) or the shipped one."""
    configured = os.environ.get("EMOMON_WORKER__CHECKPOINT")
    return Path(configured) if configured else CHECKPOINT


def checkpoint_window() -> str:
    """The Whisper-frame recipe the checkpoint reads (``full`` if unknown)."""
    from emomon.model.errors import ModelError
    from emomon.model.recipe import frames_recipe

    try:
        return frames_recipe(checkpoint_dir())
    except ModelError:
        return "full"


def has_checkpoint() -> bool:
    return (checkpoint_dir() / "config.json").is_file()


def require_checkpoint() -> None:
    """The real emotion model is what these tests run; say clearly when it is not there yet."""
    if not has_checkpoint():
        pytest.skip(
            f"no emotion checkpoint at {checkpoint_dir()} (train it, or set EMOMON_WORKER__CHECKPOINT)"
        )


def fusion_worker(**overrides: Any) -> Any:
    """The real ``FusionWorker`` on the configured checkpoint, on CPU."""
    require_checkpoint()
    from emomon.services.settings import load_settings
    from emomon.services.worker import FusionWorker

    return FusionWorker(load_settings(overrides={"worker": {"device": "cpu", **overrides}}).worker)


class ListSink:
    """A sink that keeps what it is given, in memory (in-process tests)."""

    name = "list"

    def __init__(self) -> None:
        self.events: list[EmotionEvent] = []

    async def start(self) -> None:
        return None

    async def publish(self, event: EmotionEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Events in a JSONL file; a torn last line (writer killed mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def worker_command(
    redis_url: str,
    consumer: str,
    jsonl: Path,
    *,
    stream: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """``emomon worker`` as a child process, configured only through its flags."""
    return [
        sys.executable,
        "-m",
        "emomon.services.cli",
        "worker",
        "--redis-url",
        redis_url,
        "--stream",
        stream,
        "--consumer",
        consumer,
        "--device",
        "cpu",
        "--jsonl",
        str(jsonl),
        "--set",
        "console.enabled=false",
        "--log-level",
        "INFO",
        *extra,
    ]


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def classifier_or_skip(**overrides: Any) -> Any:
    """The real ``FusionWorker`` on the shipped checkpoint."""
    return fusion_worker(**overrides)


def worker_argv(
    redis_url: str, consumer: str, jsonl: Path, *, stream: str, extra: Sequence[str] = ()
) -> list[str]:
    """The real ``emomon worker`` command line."""
    require_checkpoint()
    return worker_command(redis_url, consumer, jsonl, stream=stream, extra=extra)


def with_header(utt: Utterance, **changes: Any) -> dict[str, bytes]:
    """The entry of ``utt`` with header fields replaced by raw JSON values (no encoder checks)."""
    raw = utt.to_wire()
    (hlen,) = struct.unpack(">I", raw[4:8])
    header = json.loads(raw[8 : 8 + hlen]) | changes
    hdr = json.dumps(header).encode()
    return {"v": "1", "u": raw[:4] + struct.pack(">I", len(hdr)) + hdr + raw[8 + hlen :]}
