"""``emomon run``'s rough edges from issue #15, each a one-line error (exit 2, no traceback) or
a line that says what happens; all fail before any model loads."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from emomon.services.cli import main
from emomon.services.commands.run import ready_line, summary_lines
from emomon.services.pipeline import PipelineStats
from emomon.services.publish.jsonl import JsonlSink
from emomon.streamer.sources.rtp import RtpSource

CALL = Path(__file__).resolve().parents[1] / "data" / "phone-call-2spk.wav"


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    t0 = time.monotonic()
    code = main(["run", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("emomon: error: "), err
    assert "Traceback" not in err
    assert time.monotonic() - t0 < 10  # before any model is loaded
    return lines[0]


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("rtp://127.0.0.1:99999", "Port out of range"),
        ("rtp://127.0.0.1:abc", "could not be cast"),
        ("rtp://127.0.0.1", "host or port missing"),
        ("rtp://:5004", "host or port missing"),
        ("rtp://127.0.0.1:5004/path?x=1", "unexpected path"),
        ("rtp://no-such-host.invalid:5004", "use an address of this machine"),
    ],
)
def test_bad_rtp_source_urls(spec: str, expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["--source", spec], capsys)
    assert expect in line and spec.split("//")[1].split(":")[0] in line


def test_rtp_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        line = one_line_error(["--source", f"rtp://127.0.0.1:{port}"], capsys)
    assert "cannot listen for RTP" in line


def test_sdp_with_a_file_source_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["--source", str(CALL), "--sdp", "missing.sdp"], capsys)
    assert "applies to rtp:// sources only" in line


def test_missing_sdp_with_rtp(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["--source", "rtp://127.0.0.1:0", "--sdp", "missing.sdp"], capsys)
    assert "cannot read SDP file missing.sdp" in line


def test_payload_map_naming_an_unsupported_codec(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--source", "rtp://127.0.0.1:0", "--set", 'source.rtp_payload_types={"18":"G729/8000"}']
    line = one_line_error(argv, capsys)
    assert "cannot decode G729" in line


def test_metrics_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["--source", str(CALL), "--metrics-port", "70000"], capsys)
    assert "metrics.port" in line


def test_jsonl_says_whether_it_appends(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"

    async def describe(append: bool) -> str:
        sink = JsonlSink(path, append=append)
        await sink.start()
        await sink.close()
        return sink.describe()

    assert "(new file)" in asyncio.run(describe(True))
    path.write_text('{"a": 1}\n{"a": 2}\n')
    said = asyncio.run(describe(True))
    assert "appending" in said and "2 existing lines" in said and "--jsonl-overwrite" in said
    assert "overwritten" in asyncio.run(describe(False)) and path.read_text() == ""


def test_ready_and_summary_lines() -> None:
    src = RtpSource("127.0.0.1", 0)
    sessions = [("call", src)]
    assert ready_line(sessions, []) == "emomon: ready: rtp://127.0.0.1:0 (session call)"
    stats = PipelineStats(by_session={"call": {"utterances": 3, "events": 3}})
    (line,) = summary_lines(stats, sessions)
    assert line.startswith("emomon: session call: 3 events from 3 utterances; RTP packets 0,")
    for key in ("lost", "late", "duplicate", "reordered", "unsupported_payload", "foreign_bye"):
        assert f"{key} 0" in line


def test_exit_when_idle_counts_from_the_first_packet() -> None:
    """A run started before its sender waits for it instead of exiting with nothing."""

    async def main_() -> tuple[float, int]:
        src = RtpSource("127.0.0.1", 0, jitter_ms=0, idle_timeout_s=0.2, exit_when_idle_s=0.3)
        await src.start()
        t0 = time.monotonic()

        async def late_sender() -> None:
            await asyncio.sleep(0.8)  # longer than exit_when_idle_s
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(5):
                    s.sendto(
                        bytes([0x80, 0])
                        + i.to_bytes(2, "big")
                        + (160 * i).to_bytes(4, "big")
                        + (7).to_bytes(4, "big")
                        + b"\x80" * 160,
                        ("127.0.0.1", src.bound_port),
                    )

        sender = asyncio.create_task(late_sender())
        n = sum([c.pcm.size async for c in src.chunks()])
        await sender
        return time.monotonic() - t0, n

    took, n = asyncio.run(asyncio.wait_for(main_(), 10))
    assert n >= 5 * 320 and took > 0.8 + 0.3


def test_run_health_and_rtp_metrics() -> None:
    """``emomon run --metrics-port``: /healthz is unhealthy until ready; /metrics carries the
    RTP counters per session."""
    from types import SimpleNamespace

    from emomon.services.commands.run import RtpCollector, run_health
    from emomon.services.metrics import Metrics

    src = RtpSource("127.0.0.1", 0)
    sessions = [("call", src)]
    pipeline = SimpleNamespace(ready=False, stats=PipelineStats())
    ok, detail = run_health(pipeline, sessions)  # type: ignore[arg-type]
    assert not ok and detail["ready"] is False and detail["rtp"]["call"]["packets"] == 0
    pipeline.ready = True
    assert run_health(pipeline, sessions)[0]  # type: ignore[arg-type]
    metrics = Metrics()
    metrics.registry.register(RtpCollector(sessions))
    text = metrics.render().decode()
    assert 'emomon_rtp_total{counter="foreign_bye",session="call"} 0.0' in text


def test_summary_of_a_file_session_has_no_rtp_part() -> None:
    from emomon.streamer.sources.file import FileSource

    stats = PipelineStats(by_session={"f": {"utterances": 2, "events": 2}})
    (line,) = summary_lines(stats, [("f", FileSource(CALL))])
    assert line == "emomon: session f: 2 events from 2 utterances"
