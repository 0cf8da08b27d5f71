"""Trend and alert topics on MQTT, and their Home Assistant binary sensors (issue 17).

Topics (``{prefix}`` = ``mqtt.topic_prefix``; docs/MQTT.md and docs/DASHBOARD.md):

- ``{prefix}/{session}/{speaker}/trend``        - retained: the speaker's latest trend (JSON);
- ``{prefix}/{session}/{speaker}/alert``        - one message when a rule fires and one when it
  clears (JSON, ``state`` = ``firing`` | ``cleared``), not retained;
- ``{prefix}/{session}/{speaker}/alert/{rule}`` - retained ``ON`` / ``OFF``: the state a Home
  Assistant binary sensor (one per rule and speaker, with ``--ha-discovery``) reads.

Why a connection of its own beside :class:`~.sink.MqttSink`: the sink's outbox delivers each
*event* at least once, in order; these messages are derived and mostly retained, so only the
newest of each retained topic matters after an outage (older trends are coalesced away), while
alert transitions are queued in order. The status topic and its last will stay the sink's: this
connection has no will, so its own loss never marks emomon offline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from typing import Any

import aiomqtt

from emomon.services.insights import MAX_SPEAKERS, InsightUpdate
from emomon.services.publish import homeassistant
from emomon.services.publish.mqtt.client import (
    ReconnectPolicy,
    SinkClient,
    describe_failure,
    parse_mqtt_url,
    tls_context,
)
from emomon.services.publish.mqtt.topics import (
    STATUS_ONLINE,
    Topics,
    sanitize_segment,
    validate_prefix,
)
from emomon.services.retry import RetryPolicy, sleep_unless
from emomon.services.settings import MqttSettings

log = logging.getLogger(__name__)

ALERT_ON, ALERT_OFF = "ON", "OFF"


def _speaker_base(topics: Topics, session: str, speaker: str) -> str:
    return f"{topics.prefix}/{sanitize_segment(session)}/{sanitize_segment(speaker)}"


def trend_topic(topics: Topics, session: str, speaker: str) -> str:
    return _speaker_base(topics, session, speaker) + "/trend"


def alert_topic(topics: Topics, session: str, speaker: str) -> str:
    return _speaker_base(topics, session, speaker) + "/alert"


def alert_state_topic(topics: Topics, session: str, speaker: str, rule: str) -> str:
    return f"{alert_topic(topics, session, speaker)}/{sanitize_segment(rule)}"


def ha_binary_config_topic(topics: Topics, session: str, speaker: str, rule: str) -> str:
    oid = homeassistant.alert_object_id(session, speaker, rule)
    return f"{topics.ha_prefix}/binary_sensor/{oid}/config"


class MqttInsightPublisher:
    """An :class:`~emomon.services.insights.InsightOutput` that publishes to the topics above."""

    name = "mqtt-insights"

    def __init__(
        self,
        settings: MqttSettings,
        rules: tuple[str, ...] = (),
        *,
        reconnect: ReconnectPolicy | None = None,
        max_alerts: int = 10_000,
        flush_timeout_s: float = 5.0,
    ) -> None:
        assert settings.url is not None
        self.settings = settings
        self.rules = rules
        self.address = parse_mqtt_url(settings.url)
        self.topics = Topics(
            validate_prefix(settings.topic_prefix), validate_prefix(settings.ha_prefix)
        )
        self.reconnect = reconnect or ReconnectPolicy()
        self.flush_timeout_s = flush_timeout_s
        self._tls = tls_context(settings) if self.address.tls else None
        self._alerts: deque[tuple[str, str]] = deque(maxlen=max_alerts)
        self._retained: OrderedDict[str, str] = OrderedDict()  # topic -> newest unsent payload
        # for HA discovery, least recently heard first; bounded like Insights' own state, so a
        # worker that runs for months neither grows nor re-announces every speaker it ever saw
        self._speakers: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._announced: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.sent = 0

    async def start(self) -> None:
        if self._runner is None:
            self._idle.set()
            self._runner = asyncio.create_task(self._run(), name="mqtt-insights")

    async def insight(self, event: dict[str, Any], update: InsightUpdate) -> None:
        session, speaker = event["session"], event["speaker"]
        self._speakers[(session, speaker)] = None
        self._speakers.move_to_end((session, speaker))
        while len(self._speakers) > MAX_SPEAKERS:
            gone, _ = self._speakers.popitem(last=False)
            self._announced.discard(gone)
        if update.trend is not None:
            self._put_retained(trend_topic(self.topics, session, speaker), update.trend)
        for alert in update.alerts:
            if len(self._alerts) == self._alerts.maxlen:
                log.warning("MQTT: alert queue full; dropping the oldest alert message")
            self._alerts.append(
                (alert_topic(self.topics, session, speaker), json.dumps(alert, allow_nan=False))
            )
            state = ALERT_ON if alert["state"] == "firing" else ALERT_OFF
            self._retained[alert_state_topic(self.topics, session, speaker, alert["rule"])] = state
        self._idle.clear()
        self._wake.set()

    def _put_retained(self, topic: str, payload: dict[str, Any]) -> None:
        self._retained.pop(topic, None)  # keep the order of the newest updates
        self._retained[topic] = json.dumps(payload, allow_nan=False)

    async def close(self) -> None:
        if self._runner is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), self.flush_timeout_s)
        except TimeoutError:
            log.warning(
                "MQTT: trend/alert messages not delivered within %.1f s", self.flush_timeout_s
            )
        self._stop.set()
        self._wake.set()
        self._runner.cancel()
        await asyncio.gather(self._runner, return_exceptions=True)
        self._runner = None

    # -- connection ------------------------------------------------------------------------
    async def _run(self) -> None:
        retry = RetryPolicy(log, self.reconnect, recovery_message=None)
        client_id = f"{self.settings.client_id}-insights" if self.settings.client_id else None
        while not self._stop.is_set():
            client = SinkClient.fresh(
                self.address, client_id=client_id, tls=self._tls, keepalive=30
            )
            connected = False
            try:
                async with client:
                    connected = True
                    retry.succeeded()
                    self._announced.clear()
                    if self.settings.ha_discovery:
                        await client.subscribe(self.topics.ha_status, qos=1)
                    await self._serve(client)
            except aiomqtt.MqttError as e:
                message = describe_failure(
                    e,
                    self.address.display,
                    connected=connected,
                    socket_error=client.last_socket_error,
                    will_retry=True,
                )
                delay = retry.next_delay_s()
                log.warning("MQTT (trends/alerts): %s; retrying in %.1f s", message, delay)
                await sleep_unless(self._stop, delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        tasks = {
            asyncio.create_task(self._drain(client)),
            asyncio.create_task(self._watch(client)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc

    async def _watch(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:  # ends (raises) when the connection is lost
            if message.payload == STATUS_ONLINE.encode():
                self._announced.clear()  # Home Assistant restarted: announce again
                self._wake.set()

    async def _drain(self, client: aiomqtt.Client) -> None:
        qos = self.settings.qos
        while True:
            self._wake.clear()
            if self.settings.ha_discovery and self.rules:
                for key in [k for k in self._speakers if k not in self._announced]:
                    for rule in self.rules:
                        await self._announce(client, *key, rule)
                    self._announced.add(key)
            while self._alerts:  # in order; removed only once the broker acknowledged it
                topic, payload = self._alerts[0]
                await client.publish(topic, payload, qos=qos, retain=False, timeout=10.0)
                self._alerts.popleft()
                self.sent += 1
            while self._retained:
                topic, payload = next(iter(self._retained.items()))
                await client.publish(topic, payload, qos=qos, retain=True, timeout=10.0)
                if self._retained.get(topic) == payload:  # not replaced meanwhile
                    del self._retained[topic]
                self.sent += 1
            if not self._alerts and not self._retained:
                self._idle.set()
                await self._wake.wait()

    async def _announce(
        self, client: aiomqtt.Client, session: str, speaker: str, rule: str
    ) -> None:
        config = homeassistant.binary_sensor_config(
            session=session,
            speaker=speaker,
            rule=rule,
            state_topic=alert_state_topic(self.topics, session, speaker, rule),
            status_topic=self.topics.status,
            qos=self.settings.qos,
        )
        await client.publish(
            ha_binary_config_topic(self.topics, session, speaker, rule),
            json.dumps(config, allow_nan=False),
            qos=1,
            retain=True,
            timeout=10.0,
        )
