"""Events as JSON Lines (one schema-v1 object per line), for replays and offline analysis."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from emomon.services.events import EmotionEvent
from emomon.services.publish.base import SinkError


class JsonlSink:
    """Events to one file; ``append=False`` truncates it at start (``--jsonl-overwrite``)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str], append: bool = True):
        self.path = Path(path)
        self.append = append
        self._f: TextIO | None = None
        self.written = 0
        self.existing_lines = 0  # lines already in the file when it was opened for appending

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.append and self.path.is_file():
                with self.path.open("rb") as f:
                    self.existing_lines = sum(1 for _ in f)
            self._f = self.path.open("a" if self.append else "w", encoding="utf-8")
        except OSError as e:
            raise SinkError(f"cannot write events to {self.path}: {e.strerror}") from e

    def describe(self) -> str:
        """How the file is written, for the start-up line (issue #15: say whether it appends)."""
        if not self.append:
            return f"writing events to {self.path} (overwritten)"
        if self.existing_lines:
            return (
                f"appending events to {self.path} after its {self.existing_lines} existing "
                "lines (--jsonl-overwrite to start it afresh)"
            )
        return f"writing events to {self.path} (new file)"

    async def publish(self, event: EmotionEvent) -> None:
        if self._f is None:
            await self.start()
        assert self._f is not None
        self._f.write(event.to_json() + "\n")
        self._f.flush()
        self.written += 1

    async def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class PerSessionJsonlSink:
    """One JSONL file per session in a folder (``emomon replay``: one file per recording)."""

    name = "jsonl-per-session"

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self._sinks: dict[str, JsonlSink] = {}

    def path_for(self, session: str) -> Path:
        return self.folder / f"{session}.jsonl"

    async def start(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot create output folder {self.folder}: {e.strerror}") from e

    async def publish(self, event: EmotionEvent) -> None:
        sink = self._sinks.get(event.session)
        if sink is None:
            sink = self._sinks[event.session] = JsonlSink(self.path_for(event.session))
            await sink.start()
        await sink.publish(event)

    async def close(self) -> None:
        for sink in self._sinks.values():
            await sink.close()
