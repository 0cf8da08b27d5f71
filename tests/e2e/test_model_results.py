"""`emomon evaluate` with the shipped checkpoint reproduces the headline MELD figure of
docs/RESULTS.md (issue #2). Reads the MELD CSVs of the development data, which are not part of
the repository (GPL-3.0): set EMOMON_MELD_DIR, default ../shared/data/meld."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MELD = Path(
    os.environ.get("EMOMON_MELD_DIR")
    or next(
        (
            p
            for p in (ROOT.parent / "shared" / "data" / "meld", Path("/work/shared/data/meld"))
            if p.is_dir()
        ),
        ROOT.parent / "shared" / "data" / "meld",
    )
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (MELD / "test_sent_emo.csv").is_file(), reason=f"MELD CSVs not found in {MELD}"
    ),
]


@pytest.mark.parametrize(
    ("context", "row_start", "bold"),
    [
        ("on", "| MELD test (2,610 utt.)", True),  # the headline: as a live session sees it
        ("off", "| — each utterance alone (`--context off`)", False),
    ],
)
def test_meld_test_text_only_reproduces_results_md(
    tmp_path: Path, context: str, row_start: str, bold: bool
) -> None:
    out = tmp_path / "meld.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "emomon.model.cli",
            "evaluate",
            "--data",
            "meld",
            "--meld-dir",
            str(MELD),
            "--split",
            "test",
            "--context",
            context,
            "--out-json",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),  # nothing cached: the frozen features are computed afresh
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    row = next(
        line
        for line in (ROOT / "docs" / "RESULTS.md").read_text().splitlines()
        if line.startswith(row_start)
    )
    cells = [c.strip() for c in row.split("|")[2:4]]
    acc, wf1 = (float(re.sub(r"\*", "", c)) for c in cells)
    assert all(c.startswith("**") == bold for c in cells), row
    assert rep["n"] == 2610 and rep["modalities_used"].get("text") == 2610
    assert rep["context"]["used"] == (context == "on")
    if context == "on":  # every utterance but each dialogue's first has earlier turns
        assert rep["context"]["utterances_with_history"] == 2610 - 280
    assert rep["accuracy"] == pytest.approx(acc, abs=0.05)
    assert rep["weighted_f1"] == pytest.approx(wf1, abs=0.05)
