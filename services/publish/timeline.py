"""A per-speaker emotion timeline picture of a replayed session (PNG)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from emomon.services.events import EmotionEvent

LABEL_COLORS = {
    "neutral": "#9e9e9e",
    "joy": "#43a047",
    "surprise": "#00acc1",
    "anger": "#e53935",
    "sadness": "#1e88e5",
    "disgust": "#8e24aa",
    "fear": "#fb8c00",
}


def write_timeline(
    events: Sequence[EmotionEvent], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """One row per speaker, one bar per utterance coloured by its label, alpha = confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    speakers = sorted({e.speaker for e in events})
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.6 * max(1, len(speakers))), dpi=100)
    for row, sp in enumerate(speakers):
        for e in (e for e in events if e.speaker == sp):
            ax.barh(
                row,
                max(0.05, e.end_s - e.start_s),
                left=e.start_s,
                height=0.6,
                color=LABEL_COLORS.get(e.label, "#000000"),
                alpha=0.35 + 0.65 * e.confidence,
                edgecolor="black",
                linewidth=0.3,
            )
    ax.set_yticks(range(len(speakers)), speakers)
    ax.set_xlabel("time (s)")
    ax.set_ylim(-0.6, max(1, len(speakers)) - 0.4)
    ax.set_title(title or "emotion timeline")
    used = sorted({e.label for e in events}) or list(LABEL_COLORS)
    ax.invert_yaxis()  # first speaker on top
    ax.legend(
        handles=[Patch(color=LABEL_COLORS.get(lab, "#000"), label=lab) for lab in used],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        frameon=False,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
