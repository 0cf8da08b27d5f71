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
    or (
        Path(os.environ["EMOMON_DATA_DIR"]) / "meld"
        if os.environ.get("EMOMON_DATA_DIR")
        else ROOT.parent / "shared" / "data" / "meld"  # shared/ beside the checkout
    )
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (MELD / "test_sent_emo.csv").is_file(), reason=f"MELD CSVs not found in {MELD}"
    ),
]


def _evaluate(tmp_path: Path, name: str, *args: str) -> dict:
    """``emomon evaluate ARGS`` from an empty feature cache (the frozen features are computed
    afresh), its JSON report."""
    out = tmp_path / f"{name}.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "emomon.model.cli",
            "evaluate",
            *args,
            "--out-json",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())


def _results_cells(row_start: str) -> list[str]:
    """Accuracy and W-F1 cells of the first RESULTS.md table row starting with ``row_start``."""
    row = next(
        line
        for line in (ROOT / "docs" / "RESULTS.md").read_text().splitlines()
        if line.startswith(row_start)
    )
    return [c.strip() for c in row.split("|")[2:4]]


def _number(cell: str) -> float:
    return float(re.sub(r"\*", "", cell))


# Dynamic int8 quantisation runs other kernels on other CPUs (AVX-512 VNNI or AVX2 in fbgemm),
# so a handful of answers differ between machines: RESULTS.md was measured on an AVX-512 machine;
# on the AVX2-only build machine of 2026-12-07 (round 9) MELD test came out 2 utterances (0.08
# points) and one RAVDESS row 3 clips (0.83 points) away. A broken cache, checkpoint or input
# path moves these figures by many points.
MELD_TOLERANCE = 0.3  # points: ~8 of 2,610 utterances
RAVDESS_TOLERANCE = 1.2  # points: ~4 of 360 clips


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
    rep = _evaluate(
        tmp_path,
        "meld",
        "--data",
        "meld",
        "--meld-dir",
        str(MELD),
        "--split",
        "test",
        "--context",
        context,
    )
    cells = _results_cells(row_start)
    assert all(c.startswith("**") == bold for c in cells), cells
    assert rep["n"] == 2610 and rep["modalities_used"].get("text") == 2610
    assert rep["context"]["used"] == (context == "on")
    if context == "on":  # every utterance but each dialogue's first has earlier turns
        assert rep["context"]["utterances_with_history"] == 2610 - 280
        assert rep["ece_15"] <= 5.0  # calibrated (issue #14)
    print(context, rep["accuracy"], rep["weighted_f1"], rep.get("ece_15"))
    assert rep["accuracy"] == pytest.approx(_number(cells[0]), abs=MELD_TOLERANCE)
    assert rep["weighted_f1"] == pytest.approx(_number(cells[1]), abs=MELD_TOLERANCE)


RAVDESS = MELD.parent / "ravdess"


@pytest.mark.skipif(not RAVDESS.is_dir(), reason=f"RAVDESS not found in {RAVDESS}")
def test_ravdess_rows_and_level_invariance_reproduce_results_md(tmp_path: Path) -> None:
    """RAVDESS actors 19–24 through text-led fusion from an empty cache, as recorded, peak-
    normalised to -1 dBFS and 20 dB below that: the RESULTS.md rows, each within 1.5 points
    of the original (the level-invariance target of issue #14)."""
    got = {}
    for level, row_start in (
        ("as-recorded", "| RAVDESS 19–24, text-led fusion, each clip alone"),
        ("peak", "| — the same clips peak-normalised to −1 dBFS"),
        ("peak-20", "| — peak-normalised, then 20 dB quieter"),
    ):
        rep = _evaluate(
            tmp_path,
            f"rav-{level}",
            "--data",
            "ravdess",
            "--ravdess-dir",
            str(RAVDESS),
            "--level",
            level,
        )
        assert rep["n"] == 360 and rep["fusion"] == "gated"
        acc, wf1 = (_number(c) for c in _results_cells(row_start))
        assert rep["accuracy"] == pytest.approx(acc, abs=RAVDESS_TOLERANCE), (level, rep)
        assert rep["weighted_f1"] == pytest.approx(wf1, abs=RAVDESS_TOLERANCE), (level, rep)
        print(level, rep["accuracy"], rep["weighted_f1"])
        got[level] = rep["accuracy"]
    assert abs(got["peak"] - got["as-recorded"]) <= 1.5
    assert abs(got["peak-20"] - got["as-recorded"]) <= 1.5
