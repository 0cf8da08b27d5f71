"""``emomon stream`` against a real ``redis-server``: models warm before the source opens, then a
``ready`` line, then transcribed utterances in the stream (issue #15, item 3)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from redis_helpers import RedisServer, redis_server_fixture  # noqa: F401 - provides redis_server

from emomon.services.queue import wire
from emomon.services.queue.redis import connect
from emomon.streamer.utterance import Utterance

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CALL_WAV = Path(__file__).parents[1] / "data" / "phone-call-2spk.wav"


async def _entries(url: str, stream: str) -> list[Utterance]:
    client = connect(url)
    try:
        return [wire.decode(f) for _, f in await client.xrange(stream)]
    finally:
        await client.aclose()


def test_stream_says_ready_after_warm_up_and_writes_utterances(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clip = tmp_path / "first-12s.wav"
    with wave.open(str(CALL_WAV), "rb") as src, wave.open(str(clip), "wb") as dst:
        dst.setparams(src.getparams())
        dst.writeframes(src.readframes(12 * src.getframerate()))
    proc = subprocess.run(
        [sys.executable, "-m", "emomon.services", "stream", f"file:{clip}"]
        + ["--redis-url", redis_server.url, "--stream", "t:ready", "--no-frames"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    ready = [i for i, line in enumerate(lines) if line.startswith("emomon: ready:")]
    assert len(ready) == 1, proc.stderr[-2000:]
    assert "first-12s.wav" in lines[ready[0]] and "'t:ready'" in lines[ready[0]]
    entries = asyncio.run(_entries(redis_server.url, "t:ready"))
    assert entries, "no utterance reached the stream"
    assert any(e.text.strip() for e in entries), [e.text for e in entries]
    # Nothing was written before the ready line: "stream finished" comes after it.
    finished = [i for i, line in enumerate(lines) if "stream finished" in line]
    assert not finished or finished[0] > ready[0]
