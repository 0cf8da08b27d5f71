"""Per-speaker trends: the rolling share of each emotion and mean valence/arousal (issue 17, item 3).

The window is stream time: the speaker's events that ended within ``trends.window_s`` of the
newest one. Shares count each event's ``label`` (so ``uncertain`` has its own share) among the
events that carry an emotion (``no_speech`` events are left out); the means are over the
events whose valence/arousal is known. A leaf module: standard library only.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

from emomon.services.affect import NRC_VAD_V1

SHARE_LABELS = (*NRC_VAD_V1, "uncertain")


class TrendWindow:
    """One speaker's events of the last ``window_s`` seconds of stream time."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, float, str, float | None, float | None]] = deque()

    def add(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Take one event (its JSON form); return the trend after it, or None for a
        ``no_speech`` event (which changes nothing)."""
        if event.get("outcome") == "no_speech":
            return None
        end = float(event["end_s"])
        self._events.append(
            (
                float(event["start_s"]),
                end,
                event["label"],
                event.get("valence"),
                event.get("arousal"),
            )
        )
        while self._events and self._events[0][1] < end - self.window_s:
            self._events.popleft()
        n = len(self._events)
        counts = dict.fromkeys(SHARE_LABELS, 0)
        for _, _, label, _, _ in self._events:
            counts[label] = counts.get(label, 0) + 1
        vals = [v for *_, v, _ in self._events if v is not None]
        ars = [a for *_, a in self._events if a is not None]
        return {
            "session": event["session"],
            "speaker": event["speaker"],
            "window_s": self.window_s,
            "events": n,
            "from_s": round(self._events[0][0], 3),
            "to_s": round(end, 3),
            "share": {k: round(c / n, 4) for k, c in counts.items()},
            "mean_valence": round(sum(vals) / len(vals), 4) if vals else None,
            "mean_arousal": round(sum(ars) / len(ars), 4) if ars else None,
            "emitted_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
