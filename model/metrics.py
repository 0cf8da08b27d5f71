"""Metrics and the confusion-matrix picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, weighted F1 (the paper's W-F1), macro F1, per-class F1, confusion matrix (%).

    Macro F1 averages the classes present in ``y_true`` only: a subset that lacks a class must
    not count it as an F1 of 0. A class neither present nor predicted has per-class F1 ``None``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(labels)))
    present = [i for i in ids if (y_true == i).any()]
    seen = set(present) | {int(i) for i in np.unique(y_pred)}
    per = f1_score(y_true, y_pred, labels=ids, average=None, zero_division=0)
    macro = (
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        if present
        else 0.0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": round(100 * float(accuracy_score(y_true, y_pred)), 2),
        "weighted_f1": round(
            100 * float(f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)),
            2,
        ),
        "macro_f1": round(100 * float(macro), 2),
        "macro_f1_classes": [labels[i] for i in present],
        "per_class_f1": {
            lab: round(100 * float(f), 2) if i in seen else None
            for i, (lab, f) in enumerate(zip(labels, per, strict=True))
        },
        "support": {lab: int((y_true == i).sum()) for i, lab in enumerate(labels)},
        "confusion": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def plot_confusion(
    report: dict[str, Any], labels: Sequence[str], path: str | Path, title: str
) -> Path:
    """Row-normalised confusion matrix as a small PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=90)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{100 * norm[i, j]:.0f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
