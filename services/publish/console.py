"""Readable one-line-per-event output for a terminal (the embedded default)."""

from __future__ import annotations

import sys
from typing import TextIO

from emomon.services.events import EmotionEvent

_COLORS = {
    "neutral": "37",
    "joy": "32",
    "surprise": "36",
    "anger": "31",
    "sadness": "34",
    "disgust": "35",
    "fear": "33",
}


def _clock(s: float) -> str:
    m, sec = divmod(s, 60)
    return f"{int(m):02d}:{sec:04.1f}"


class ConsoleSink:
    name = "console"

    def __init__(
        self, stream: TextIO | None = None, color: str = "auto", show_session: bool = False
    ):
        self.stream = stream or sys.stdout
        self.color = color == "always" or (color == "auto" and self.stream.isatty())
        self.show_session = show_session

    async def start(self) -> None:
        return None

    def format(self, ev: EmotionEvent) -> str:
        label = f"{ev.label:<8}"
        if self.color:
            label = f"\033[{_COLORS.get(ev.label, '0')}m{label}\033[0m"
        who = ev.speaker + ("?" if ev.speaker_provisional else "")
        sess = f"{ev.session} " if self.show_session else ""
        text = f'  "{ev.text}"' if ev.text else ""
        mods = "+".join(ev.modalities) or "none"
        # a replay faster than real time has no arrival time to measure latency from (#15)
        lat = "replay" if ev.latency_ms is None else f"{ev.latency_ms:.0f} ms"
        return (
            f"{sess}[{_clock(ev.start_s)}-{_clock(ev.end_s)}] {who:<11} {label} {ev.confidence:4.2f}"
            f"  ({mods}, {lat}){text}"
        )

    async def publish(self, event: EmotionEvent) -> None:
        # One write per line, so concurrent sessions never interleave half lines.
        self.stream.write(self.format(event) + "\n")
        self.stream.flush()

    async def close(self) -> None:
        self.stream.flush()
