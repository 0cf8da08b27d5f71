"""The ``emomon`` command line as a whole: one parser built from the command modules, flags whose
help shows the settings' defaults, one session-naming rule, and ``emomon stream`` starting
without torch or the emotion model (issue #19)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from emomon.services.cli import build_parser, main
from emomon.services.commands.sessions import session_ids
from emomon.services.settings import Settings

HEAVY = ("torch", "transformers", "emomon.model.inference", "emomon.services.cli")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_stream_starts_without_torch_or_the_emotion_model(tmp_path: Path) -> None:
    wav = tmp_path / "call.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000, dtype=np.int16).tobytes())
    r = _python(
        f"""
        import sys
        from emomon.services import cli
        from emomon.services.commands.common import settings_from_args
        from emomon.services.commands.sessions import open_sources
        from emomon.services.commands.stream import FLAGS, METRICS
        from emomon.services.commands.flags import overrides
        from emomon.services.metrics import Metrics
        from emomon.services.queue.redis_streams import RedisProducer, connect
        from emomon.services import pipeline
        from emomon.streamer.transcriber import Transcriber

        argv = ["stream", {str(wav)!r}, "--session", "call", "--buffer-size", "10"]
        args = cli.build_parser(argv).parse_args(argv)
        settings = settings_from_args(args, overrides(args, *FLAGS, METRICS))
        sessions = open_sources(settings, args.sources)
        transcriber = Transcriber(pipeline.transcriber_config(settings))
        producer = RedisProducer(connect(settings.redis.url), settings.redis, Metrics())
        assert [sid for sid, _ in sessions] == ["call"], sessions
        assert settings.redis.buffer_size == 10
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "['emomon.services.cli']"


@pytest.mark.parametrize(
    "module", ["config", "devices", "model_commands", "replay", "run", "stream", "worker"]
)
def test_command_modules_do_not_import_the_cli(module: str) -> None:
    r = _python(
        f"""
        import sys
        import emomon.services.commands.{module}
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_help_shows_the_settings_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    worker = _help("worker", capsys)
    defaults = Settings().worker
    entry = " ".join(worker.split("\n  --max-wait-ms MS", 1)[1].split()[:9])
    assert f"(default {defaults.max_wait_ms})" in entry, entry
    assert f"(default {defaults.max_batch})" in " ".join(worker.split())
    for name in ("run", "replay", "stream", "worker"):
        text = " ".join(_help(name, capsys).split())
        assert "--config FILE" in text and "--log-level" in text, name


def test_full_parser_builds_every_command() -> None:
    args = build_parser().parse_args(["worker", "--max-batch", "4", "--mqtt", "mqtt://h:1"])
    assert args.max_batch == 4 and args.mqtt_url == "mqtt://h:1"


def test_model_commands_are_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("evaluate", capsys)
    assert text.startswith("usage: emomon evaluate")
    for flag in ("--checkpoint", "--fusion", "--level", "--manifest", "--test-sessions"):
        assert flag in text
    assert "(default: test)" in " ".join(text.split())


def test_one_session_naming_rule() -> None:
    assert session_ids(None, ["file:a/b/call.wav"]) == ["call"]
    assert session_ids("desk", ["file:call.wav"]) == ["desk"]
    assert session_ids("desk", ["file:a.wav", "rtp://0.0.0.0:5004"]) == [
        "desk-a",
        "desk-rtp-0.0.0.0-5004",
    ]
    assert session_ids(None, ["file:x/call.wav", "file:y/call.wav"]) == ["call", "call-2"]
