"""The linear-probe baseline of the audio expert, on the same frozen features (issue #14).

Features: mean ⊕ std of the Whisper tiny.en encoder frames of level-normalised audio (the
expert's recipe ``10+8/-23``, computed by the live ASR pass), clean clips only. Classifier:
standardise → logistic regression (C = 0.1), MODEL.md §5's probe. Printed next to the shipped
expert (``--checkpoint``, default the shipped one; skipped if it has no expert):

* RAVDESS actors 1–18 → 19–24, as recorded / peak-normalised to -1 dBFS / that minus 20 dB
  (the expert is read on the clip alone: "utterance", and relative to the actor's earlier
  clips: "speaker");
* cross-corpus, TESS → all RAVDESS actors and RAVDESS 1–18 → all of TESS (the expert's
  figures for these come from ``emomon train-audio``'s report, which retrains per direction).

Usage (features are cached; the first run computes ~5,000 Whisper passes):

    .venv/bin/python benchmarks/bench_audio_probe.py --ravdess-dir DIR --tess-dir DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ravdess-dir",
        default=None,
        help="default: $EMOMON_RAVDESS_DIR or $EMOMON_DATA_DIR/ravdess",
    )
    p.add_argument(
        "--tess-dir", default=None, help="default: $EMOMON_TESS_DIR or $EMOMON_DATA_DIR/tess"
    )
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    from emomon.model import expert_data
    from emomon.model.audio_expert import load_expert
    from emomon.model.audio_training import actors, evaluate_expert, probe_predict, score, speakers
    from emomon.model.cache import default_cache_dir
    from emomon.model.checkpoint import DEFAULT_CHECKPOINT
    from emomon.model.data_dirs import data_dir
    from emomon.model.datasets import MELD_LABELS, load_ravdess, load_tess
    from emomon.model.errors import ModelError

    try:
        rav_dir, tess_dir = data_dir("ravdess", args.ravdess_dir), data_dir("tess", args.tess_dir)
        rav, tess = load_ravdess(rav_dir), load_tess(tess_dir)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cache = Path(args.cache_dir or default_cache_dir())
    labels = MELD_LABELS
    expert = load_expert(args.checkpoint or DEFAULT_CHECKPOINT)
    data = expert_data.build(rav + tess, labels, cache, 0, workers=args.workers)
    print(
        f"# {platform.machine()} {platform.processor() or ''}, {datetime.date.today()}; W-F1 / accuracy %"
    )
    rows = []
    train = data.subset(actors(data, range(1, 19)))
    for name, gain in (
        ("as recorded", 0.0),
        ("peak -1 dBFS", expert_data.PEAK),
        ("peak -1 dBFS, -20 dB", expert_data.PEAK_MINUS_20),
    ):
        test = expert_data.build(
            load_ravdess(rav_dir, actors=range(19, 25)),
            labels,
            cache,
            0,
            workers=args.workers,
            gain_db=gain,
            progress=False,
        )
        row = {
            "task": f"RAVDESS 1-18 -> 19-24, {name}",
            "probe": score(test.y, probe_predict(train, test).argmax(1), labels),
        }
        if expert is not None:
            row.update(evaluate_expert(expert, test, labels))
        rows.append(row)
    for name, tr_mask, te_mask in (
        ("TESS -> all RAVDESS actors", speakers(data, "tess/"), speakers(data, "ravdess/")),
        ("RAVDESS 1-18 -> all TESS", actors(data, range(1, 19)), speakers(data, "tess/")),
    ):
        tr, te = data.subset(tr_mask), data.subset(te_mask)
        rows.append({"task": name, "probe": score(te.y, probe_predict(tr, te).argmax(1), labels)})
    for r in rows:
        cells = [f"probe {r['probe']['weighted_f1']:.2f} / {r['probe']['accuracy']:.2f}"]
        for mode in ("utterance", "speaker"):
            if mode in r:
                cells.append(
                    f"expert ({mode}) {r[mode]['weighted_f1']:.2f} / {r[mode]['accuracy']:.2f}"
                )
        print(f"{r['task']:<38} " + "   ".join(cells))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
