"""Where the dashboard's updates come from when it does not run inside the pipeline.

- :class:`MqttFeed` (``emomon dashboard --mqtt-url``, distributed mode): subscribes to the
  topics ``emomon run``/``emomon worker`` publish (events, retained states, trends, alerts) and
  keeps trying while the broker is away; the page shows a banner until it is back.
- :func:`load_jsonl`: events written by ``--jsonl`` or ``emomon replay``; trends and alerts are
  recomputed with the settings' rules, as a live run would have published them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiomqtt

from emomon.services.dashboard.hub import DashboardHub
from emomon.services.dashboard.messages import (
    ShownAlert,
    ShownEvent,
    ShownTrend,
    checked,
    parse_json,
)
from emomon.services.events import EmotionEvent
from emomon.services.insights import Insights
from emomon.services.publish.base import SinkError
from emomon.services.publish.mqtt.client import (
    ReconnectPolicy,
    SinkClient,
    describe_failure,
    parse_mqtt_url,
    tls_context,
)
from emomon.services.publish.mqtt.topics import STATUS_OFFLINE, Topics, validate_prefix
from emomon.services.retry import RetryPolicy, sleep_unless
from emomon.services.settings import MqttSettings

log = logging.getLogger(__name__)


def normalise(d: dict[str, Any]) -> dict[str, Any]:
    """A published event as this version publishes it (valence/arousal added to older ones).

    Raises:
        ValueError: not an event (missing or mistyped fields, non-finite numbers).
    """
    if not isinstance(d, dict):
        raise ValueError(f"not an emomon event (a JSON {type(d).__name__})")
    try:
        ev = EmotionEvent.from_dict(d)
        d = checked(ShownEvent, {**d, "event_id": ev.event_id})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"not an emomon event ({type(e).__name__}: {e})") from None
    if "valence" not in d and (va := ev.affect) is not None:
        d = {**d, "valence": round(va[0], 4), "arousal": round(va[1], 4)}
    return d


def feed_event(hub: DashboardHub, insights: Insights | None, event: dict[str, Any]) -> None:
    hub.add_event(event)
    if insights is None:
        return
    update = insights.update(event)
    if update.trend is not None:
        hub.add_trend(update.trend)
    for alert in update.alerts:
        hub.add_alert(alert)


def load_jsonl(hub: DashboardHub, paths: Iterable[str | Path], insights: Insights | None) -> int:
    """Feed every event of the files to the hub, in file order; return how many.

    Lines that are not events are skipped and counted in one warning per file.

    Raises:
        SinkError: a file cannot be read.
    """
    total = 0
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SinkError(f"cannot read events from {path}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise SinkError(f"{path} is not a UTF-8 JSONL file of emomon events") from e
        bad = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                feed_event(hub, insights, normalise(parse_json(line)))
                total += 1
            except ValueError:  # json.JSONDecodeError is a ValueError
                bad += 1
        if bad:
            log.warning("%s: %d lines are not emomon events; skipped", path, bad)
    hub.set_status(live=False, detail=f"{total} events loaded")
    return total


class MqttFeed:
    """Subscribe to emomon's topics under ``mqtt.topic_prefix`` and feed the hub, reconnecting
    per :class:`ReconnectPolicy` (the page shows a banner while the broker is away)."""

    def __init__(
        self, settings: MqttSettings, hub: DashboardHub, reconnect: ReconnectPolicy | None = None
    ) -> None:
        if not settings.url:
            raise SinkError("emomon dashboard needs --mqtt-url or a JSONL file to show")
        self.settings = settings
        self.hub = hub
        self.address = parse_mqtt_url(settings.url)
        self.prefix = validate_prefix(settings.topic_prefix)
        self.topics = Topics(self.prefix)
        self.reconnect = reconnect or ReconnectPolicy(max_delay_s=5.0)
        self._tls = tls_context(settings) if self.address.tls else None
        self.dropped = 0
        self.connects = 0

    @property
    def filters(self) -> tuple[str, ...]:
        p = self.prefix
        return (
            f"{p}/+/events",
            f"{p}/+/+/state",
            f"{p}/+/+/trend",
            f"{p}/+/+/alert",
            f"{p}/status",
        )

    async def run(self) -> None:
        """Until cancelled."""
        retry = RetryPolicy(log, self.reconnect, recovery_message=None)
        client_id = f"{self.settings.client_id}-dashboard" if self.settings.client_id else None
        while True:
            client = SinkClient.fresh(
                self.address, client_id=client_id, tls=self._tls, keepalive=10
            )
            connected = False
            try:
                async with client:
                    for f in self.filters:
                        await client.subscribe(f, qos=1)
                    connected = True
                    self.connects += 1
                    retry.succeeded()
                    log.info(
                        "dashboard: subscribed to %s/# on %s", self.prefix, self.address.display
                    )
                    self.hub.set_status(
                        connected=True, detail=f"connected to {self.address.display}"
                    )
                    async for message in client.messages:
                        self._handle(str(message.topic), message.payload)
            except aiomqtt.MqttError as e:
                why = describe_failure(
                    e,
                    self.address.display,
                    connected=connected,
                    socket_error=client.last_socket_error,
                    will_retry=True,
                )
                delay = retry.next_delay_s()
                self.hub.set_status(connected=False, detail=f"{why}; retrying")
                log.warning("dashboard: %s; retrying in %.1f s", why, delay)
                await sleep_unless(None, delay)

    def _handle(self, topic: str, payload: Any) -> None:
        if topic == self.topics.status:
            offline = payload == STATUS_OFFLINE.encode()
            self.hub.set_status(
                connected=True,
                detail=f"{self.address.display}: publisher {'offline' if offline else 'online'}",
            )
            return
        try:
            d = parse_json(payload)
            if topic.endswith("/trend"):
                self.hub.add_trend(checked(ShownTrend, d))
            elif topic.endswith("/alert"):
                self.hub.add_alert(checked(ShownAlert, d))
            else:
                self.hub.add_event(normalise(d))
        except (ValueError, TypeError, KeyError) as e:
            self.dropped += 1
            log.debug("dashboard: dropped a message on %s: %s", topic, e)
