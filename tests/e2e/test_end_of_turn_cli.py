"""``emomon run`` with the end-of-turn model turned on but its wheel incomplete: one line that
names the fix, no traceback (issue #16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CALL_WAV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_missing_end_of_turn_model_gives_one_line_error(tmp_path: Path) -> None:
    # A pipecat-ai distribution found first on the path, without the model file in it.
    info = tmp_path / "pipecat_ai-1.14.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pipecat-ai\nVersion: 1.14.0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "emomon.services", "run", "--source", f"file:{CALL_WAV}"]
        + ["--speakers", "channel", "--set", "vad.end_of_turn_pause_ms=150", "--no-console"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert r.returncode == 2, r.stderr
    assert "end-of-turn model" in r.stderr and "pip install --no-deps pipecat-ai" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
