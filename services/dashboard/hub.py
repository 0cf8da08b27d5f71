"""The dashboard's state and the fan-out of its updates to open pages (Server-Sent Events).

Updates arrive as published JSON (events, trends, alerts) from the embedded pipeline (the hub is
an :class:`~emomon.services.insights.InsightOutput`), from MQTT or from a JSONL file. Each one is
applied to the state a newly opened page receives as a snapshot, then queued, already encoded,
for every connected page. A page that cannot keep up (its queue is full) is disconnected; its
browser reconnects and gets a fresh snapshot. Nothing here waits, so an open page never slows
the pipeline (benchmarks/bench_pipeline.py --dashboard measures it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from emomon.services.insights import InsightUpdate

log = logging.getLogger(__name__)

ALERT_LOG = 20  # alert messages kept per speaker
CLIENT_QUEUE = 1_000  # updates buffered per page before it is dropped


@dataclass
class _Speaker:
    trend: dict[str, Any] | None = None
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ALERT_LOG))
    active: set[str] = field(default_factory=set)


@dataclass
class _Session:
    events: deque[dict[str, Any]]
    seen: set[str] = field(default_factory=set)
    speakers: dict[str, _Speaker] = field(default_factory=dict)


def _frame(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, allow_nan=False, separators=(',', ':'))}\n\n".encode()


class DashboardHub:
    """The state every page shows, and the queues of the pages that are open.

    Args:
        history: events kept per session for the snapshot a newly opened page receives.
        source: what feeds it, shown on the page (``embedded``, ``mqtt://…``, a file name).
        rules: the alert rules' names and texts, listed on the page.
    """

    name = "dashboard"

    def __init__(
        self, history: int = 500, source: str = "embedded", rules: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.history = history
        self.source = source
        self.rules = rules
        self.sessions: dict[str, _Session] = {}
        self.live = True  # sources still playing (False once the run ended)
        self.connected = True  # the feed reaches its source (MQTT broker)
        self.detail = ""
        self.dropped_clients = 0
        self._clients: set[asyncio.Queue[bytes | None]] = set()

    # -- InsightOutput (embedded pipeline) -----------------------------------------------------
    async def start(self) -> None:
        return None

    async def insight(self, event: dict[str, Any], update: InsightUpdate) -> None:
        self.add_event(event)
        if update.trend is not None:
            self.add_trend(update.trend)
        for alert in update.alerts:
            self.add_alert(alert)

    async def close(self) -> None:
        return None

    # -- updates ---------------------------------------------------------------------------
    def _session(self, session: str) -> _Session:
        s = self.sessions.get(session)
        if s is None:
            s = self.sessions[session] = _Session(events=deque(maxlen=self.history))
        return s

    def _speaker(self, session: str, speaker: str) -> _Speaker:
        s = self._session(session)
        return s.speakers.setdefault(speaker, _Speaker())

    def add_event(self, event: dict[str, Any]) -> None:
        s = self._session(event["session"])
        if event["event_id"] in s.seen:  # at-least-once delivery: a redelivered duplicate
            return
        s.seen.add(event["event_id"])
        if len(s.seen) > 4 * self.history:
            s.seen = {e["event_id"] for e in s.events}
        self._speaker(event["session"], event["speaker"])
        s.events.append(event)
        self._broadcast("emotion", event)

    def add_trend(self, trend: dict[str, Any]) -> None:
        self._speaker(trend["session"], trend["speaker"]).trend = trend
        self._broadcast("trend", trend)

    def add_alert(self, alert: dict[str, Any]) -> None:
        sp = self._speaker(alert["session"], alert["speaker"])
        sp.alerts.append(alert)
        if alert["state"] == "firing":
            sp.active.add(alert["rule"])
        else:
            sp.active.discard(alert["rule"])
        self._broadcast("alert", alert)

    def set_status(
        self, *, connected: bool | None = None, live: bool | None = None, detail: str = ""
    ) -> None:
        """The feed's connection (False: the page shows a banner) and whether sources still play."""
        if connected is not None:
            self.connected = connected
        if live is not None:
            self.live = live
        self.detail = detail
        self._broadcast("status", self.status())

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "live": self.live,
            "detail": self.detail,
            "source": self.source,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": self.status(),
            "rules": [{"name": n, "when": w} for n, w in self.rules],
            "sessions": {
                sid: {
                    "events": list(s.events),
                    "speakers": {
                        name: {
                            "trend": sp.trend,
                            "alerts": list(sp.alerts),
                            "active": sorted(sp.active),
                        }
                        for name, sp in s.speakers.items()
                    },
                }
                for sid, s in self.sessions.items()
            },
        }

    # -- pages -----------------------------------------------------------------------------
    @property
    def pages(self) -> int:
        """Pages connected now."""
        return len(self._clients)

    def _broadcast(self, kind: str, data: Any) -> None:
        if not self._clients:
            return
        frame = _frame(kind, data)
        for q in list(self._clients):
            try:
                q.put_nowait(frame)
            except asyncio.QueueFull:
                self._clients.discard(q)
                self.dropped_clients += 1
                log.warning(
                    "dashboard: a page fell %d updates behind; it will reconnect", CLIENT_QUEUE
                )
                q.get_nowait()
                q.put_nowait(None)  # ends that page's stream

    async def frames(self, keepalive_s: float = 15.0) -> AsyncIterator[bytes]:
        """One page's stream: the snapshot, then every update, until the page goes or lags;
        an SSE comment every ``keepalive_s`` of quiet keeps proxies from closing it."""
        q: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(q)
        try:
            yield _frame("snapshot", self.snapshot())
            while True:
                try:
                    frame = await asyncio.wait_for(q.get(), keepalive_s)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if frame is None:
                    return
                yield frame
        finally:
            self._clients.discard(q)

    def close_pages(self) -> None:
        for q in list(self._clients):
            self._clients.discard(q)
            try:
                q.put_nowait(None)
            except asyncio.QueueFull:
                q.get_nowait()
                q.put_nowait(None)
