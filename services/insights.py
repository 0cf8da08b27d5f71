"""Trends and alerts per speaker, computed as events are published (issue 17, items 3-4).

:class:`Insights` is the pure part: an event (its published JSON form) in, the speaker's trend
and the alert transitions it caused out. :class:`InsightsSink` is a :class:`Sink` that runs it
on every event and hands the event with its :class:`InsightUpdate` to *outputs*: the MQTT
publisher of the trend/alert topics (:mod:`.publish.mqtt.insights`) and the dashboard
(:mod:`.dashboard.hub`). The same engine replays a JSONL file for the dashboard, so a loaded
recording shows the trends and alerts a live run would have published.

The state is per process: with several Redis workers sharing a session, each sees only the
events it classified (docs/DASHBOARD.md says so).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from emomon.services.alerts import AlertEvaluator
from emomon.services.dashboard_settings import AlertSettings, TrendSettings
from emomon.services.events import EmotionEvent
from emomon.services.settings import Settings
from emomon.services.trends import TrendWindow

MAX_SPEAKERS = 4096  # speakers whose state is kept (least recently heard dropped first)
RECENT_IDS = 256  # event ids remembered per speaker to ignore redelivered duplicates


@dataclass(frozen=True, slots=True)
class InsightUpdate:
    """What one event changed: the speaker's trend (None: trends off, or a no_speech event) and
    the alert messages (``state`` = ``firing`` | ``cleared``)."""

    trend: dict[str, Any] | None = None
    alerts: tuple[dict[str, Any], ...] = ()
    active: tuple[str, ...] = field(default=())  # the speaker's active rules after the event


@dataclass
class _SpeakerState:
    trend: TrendWindow
    alerts: AlertEvaluator
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))

    def first_time(self, event_id: str) -> bool:
        if event_id in self.recent:
            return False
        self.recent.append(event_id)
        return True


class Insights:
    """Trend windows and alert evaluators, one of each per (session, speaker)."""

    def __init__(self, trends: TrendSettings, alerts: AlertSettings) -> None:
        self.trends = trends
        self.rules = alerts.parsed()
        self.margin = alerts.hysteresis
        self._speakers: OrderedDict[tuple[str, str], _SpeakerState] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.trends.enabled or bool(self.rules)

    def update(self, event: dict[str, Any]) -> InsightUpdate:
        key = (event["session"], event["speaker"])
        state = self._speakers.get(key)
        if state is None:
            state = _SpeakerState(
                TrendWindow(self.trends.window_s), AlertEvaluator(self.rules, self.margin)
            )
            self._speakers[key] = state
            if len(self._speakers) > MAX_SPEAKERS:
                self._speakers.popitem(last=False)
        else:
            self._speakers.move_to_end(key)
        evaluator = state.alerts
        if not state.first_time(event["event_id"]):  # at-least-once delivery redelivered it
            return InsightUpdate(active=tuple(evaluator.active()))
        trend = state.trend.add(event) if self.trends.enabled else None
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        alerts = tuple(
            {
                "session": event["session"],
                "speaker": event["speaker"],
                "rule": rule.name,
                "when": rule.text,
                "state": change,
                "value": round(value, 4),
                "at_s": event["end_s"],
                "event_id": event["event_id"],
                "emitted_at": now,
            }
            for rule, change, value in evaluator.update(event)
        )
        return InsightUpdate(trend, alerts, tuple(evaluator.active()))


class InsightOutput(Protocol):
    """Where an event goes together with what it changed (MQTT topics, the dashboard)."""

    name: str

    async def start(self) -> None: ...

    async def insight(self, event: dict[str, Any], update: InsightUpdate) -> None: ...

    async def close(self) -> None: ...


class InsightsSink:
    """A :class:`~emomon.services.publish.base.Sink`: runs :class:`Insights` on every event and
    hands the result to each output. Outputs must not wait on the network in ``insight``."""

    name = "insights"

    def __init__(self, insights: Insights, outputs: Sequence[InsightOutput]) -> None:
        self.insights = insights
        self.outputs = list(outputs)

    async def start(self) -> None:
        started: list[InsightOutput] = []
        try:
            for out in self.outputs:
                await out.start()
                started.append(out)
        except BaseException:
            for out in reversed(started):
                with contextlib.suppress(Exception):
                    await out.close()
            raise

    async def publish(self, event: EmotionEvent) -> None:
        d = event.to_dict()
        update = self.insights.update(d)
        for out in self.outputs:
            await out.insight(d, update)

    async def close(self) -> None:
        for out in self.outputs:
            await out.close()


def insight_sinks(settings: Settings, outputs: Sequence[InsightOutput] = ()) -> list[InsightsSink]:
    """The insights sink of a run: MQTT trend/alert topics when publishing to MQTT (and trends
    or rules are on), plus ``outputs`` (the dashboard); none when nothing would read it."""
    engine = Insights(settings.trends, settings.alerts)
    outs = list(outputs)
    if settings.mqtt.url and engine.enabled:
        from emomon.services.publish.mqtt.insights import MqttInsightPublisher

        rules = tuple(r.name for r in engine.rules)
        outs.insert(0, MqttInsightPublisher(settings.mqtt, rules))
    return [InsightsSink(engine, outs)] if outs else []
