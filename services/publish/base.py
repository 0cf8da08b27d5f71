"""The protocol every event sink implements (console, JSONL, MQTT, ...)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from emomon.services.events import EmotionEvent


class SinkError(RuntimeError):
    """A sink cannot start or deliver (unreachable broker, bad credentials, unwritable file)."""


@runtime_checkable
class Sink(Protocol):
    """Receives every event. ``publish`` must not lose an event it accepted without counting it."""

    name: str

    async def start(self) -> None: ...

    async def publish(self, event: EmotionEvent) -> None: ...

    async def close(self) -> None: ...
