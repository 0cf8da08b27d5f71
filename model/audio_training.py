"""Training and choosing the audio expert, with its linear-probe baseline (issue #14).

Choices are made on **cross-corpus** dev scores, never on the test actors:

* *TESS → RAVDESS*: trained on TESS only (its two speakers), scored on RAVDESS actors 1–18;
* *RAVDESS → TESS*: trained on RAVDESS actors 1–18, scored on TESS speaker OAF.

The held-out halves — RAVDESS actors 19–24 and TESS speaker YAF — are never scored before a
choice is made. The shipped expert is then trained on RAVDESS actors 1–16 and all of TESS,
clean and augmented, with the chosen settings; actors 17–18 are its dev set (for the gate
and the temperatures, :mod:`model.gate`), actors 19–24 its test.

The baseline next to every figure is a logistic regression (C = 0.1) on the same frozen
statistics of the clean clips (MODEL.md §5's probe), trained on the same clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .audio_expert import (
    STATS_DIM,
    AudioExpert,
    AudioExpertConfig,
    ExpertData,
    expert_logits,
    train_expert,
)
from .metrics import classification_report


def probe_predict(train: ExpertData, test: ExpertData, c: float = 0.1) -> np.ndarray:
    """The linear probe: standardise clean training statistics → logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clean = train.subset(train.copy == 0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    clf.fit(clean.x[:, :STATS_DIM], clean.y)
    proba = np.zeros((len(test.y), int(max(train.y.max(), test.y.max())) + 1))
    proba[:, clf.classes_] = clf.predict_proba(test.x[:, :STATS_DIM])
    return proba


def score(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy / W-F1 / macro-F1 over the classes present in ``y``."""
    rep = classification_report(y, pred, labels)
    present = sorted(set(int(v) for v in y))
    per = rep["per_class_f1"]
    rep["macro_f1_present"] = round(float(np.mean([per[labels[i]] for i in present])), 2)
    return {k: rep[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1_present", "per_class_f1")}


def speakers(data: ExpertData, prefix: str) -> np.ndarray:
    return np.array([s.startswith(prefix) for s in data.speaker])


def actors(data: ExpertData, ids: Sequence[int]) -> np.ndarray:
    names = {f"ravdess/actor{a:02d}" for a in ids}
    return np.array([s in names for s in data.speaker])


def evaluate_expert(
    expert: AudioExpert, test: ExpertData, labels: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    clean = test.subset(test.copy == 0)
    out = {"utterance": score(clean.y, expert_logits(expert, clean, "utterance").argmax(1), labels)}
    if expert.cfg.speaker_norm:
        out["speaker"] = score(
            clean.y, expert_logits(expert, clean, "speaker", seed).argmax(1), labels
        )
    return out


def cross_corpus(
    data: ExpertData,
    cfg: AudioExpertConfig,
    train_kw: dict[str, Any],
    heldout: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Both directions. ``heldout=False``: dev halves (RAVDESS 1–18, TESS OAF);
    ``True``: the held-out halves (RAVDESS 19–24, TESS YAF) and all of each corpus."""
    labels = cfg.labels
    tess = speakers(data, "tess/")
    rav_trainable = actors(data, range(1, 19))
    res: dict[str, Any] = {}
    for name, train_mask, evals in (
        (
            "tess_to_ravdess",
            tess,
            {"actors_1-18": actors(data, range(1, 19))}
            if not heldout
            else {
                "actors_19-24": actors(data, range(19, 25)),
                "all_actors": speakers(data, "ravdess/"),
            },
        ),
        (
            "ravdess_to_tess",
            rav_trainable,
            {"OAF": speakers(data, "tess/OAF")}
            if not heldout
            else {"YAF": speakers(data, "tess/YAF"), "all": tess},
        ),
    ):
        train = data.subset(train_mask)
        expert, _ = train_expert(train, cfg, **train_kw)
        res[name] = {}
        for ename, emask in evals.items():
            test = data.subset(emask & (data.copy == 0))
            r = evaluate_expert(expert, test, labels)
            r["probe"] = score(test.y, probe_predict(train, test).argmax(1), labels)
            res[name][ename] = r
            if log:
                best = max(v["weighted_f1"] for k, v in r.items() if k != "probe")
                log(
                    f"  {name} {ename}: expert W-F1 {best:.2f}  probe {r['probe']['weighted_f1']:.2f}"
                )
    return res


def dev_score(res: dict[str, Any]) -> float:
    """Mean W-F1 of the two cross-corpus dev directions (the better of utterance/speaker mode
    counts only if the same mode wins both: the mode is part of the choice)."""
    modes = [m for m in ("utterance", "speaker") if m in res["tess_to_ravdess"]["actors_1-18"]]
    return max(
        (
            res["tess_to_ravdess"]["actors_1-18"][m]["weighted_f1"]
            + res["ravdess_to_tess"]["OAF"][m]["weighted_f1"]
        )
        / 2
        for m in modes
    )


GRID: tuple[dict[str, Any], ...] = (
    {"speaker_norm": False, "augmented": False},
    {"speaker_norm": False, "augmented": True},
    {"speaker_norm": True, "augmented": True},
    {"speaker_norm": True, "augmented": True, "hidden": 512, "dropout": 0.5},
)


def choose(
    data: ExpertData,
    base: AudioExpertConfig,
    train_kw: dict[str, Any],
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every GRID row on the cross-corpus dev halves; the best row and all results."""
    rows: list[dict[str, Any]] = []
    for row in GRID:
        cfg_kw = {k: v for k, v in row.items() if k != "augmented"}
        cfg = dataclasses.replace(base, **cfg_kw)
        d = data if row["augmented"] else data.subset(data.copy == 0)
        if log:
            log(f"candidate {row}")
        res = cross_corpus(d, cfg, train_kw, log=log)
        rows.append({"settings": row, "dev": dev_score(res), "results": res})
        if log:
            log(f"  dev score {rows[-1]['dev']:.2f}")
    best = max(rows, key=lambda r: float(r["dev"]))
    return dict(best["settings"]), rows
