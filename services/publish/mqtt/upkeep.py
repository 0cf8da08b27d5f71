"""What the MQTT sink publishes besides events: availability and the retained states' upkeep.

:class:`Upkeep` is told about each connection and each message the sink's subscriptions bring
(instances' status, the aggregate status, speakers' states) and, from the drain task, publishes
what those call for: ``online`` back on the aggregate after a crashed instance's last will, and
the retained states the broker lost (see :mod:`.presence` and :mod:`.states`).
"""

from __future__ import annotations

import logging
import ssl
import time

import aiomqtt

from emomon.services.publish.mqtt.client import BrokerAddress, SinkClient
from emomon.services.publish.mqtt.presence import Presence
from emomon.services.publish.mqtt.states import LatestStates
from emomon.services.publish.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics

log = logging.getLogger(__name__)


class Upkeep:
    """Availability and retained-state upkeep of one sink instance.

    Args:
        topics: the sink's topic layout.
        instance: this instance's id (its status topic level and MQTT client id).
        state_grace_s: after a reconnect, how long the broker's retained states may take to
            arrive before the ones it does not hold are published again.
    """

    def __init__(self, topics: Topics, instance: str, state_grace_s: float = 0.5) -> None:
        self.topics = topics
        self.presence = Presence(topics.prefix, instance)
        self.states = LatestStates()
        self.state_grace_s = state_grace_s
        self.availability_changed = False  # the HA discovery configs must list other topics
        self._fix_aggregate = False
        self._check_states_at: float | None = None
        self._due: dict[str, None] = {}  # state topics to publish again

    def clients(
        self, address: BrokerAddress, tls: ssl.SSLContext | None, window: int
    ) -> tuple[SinkClient, SinkClient]:
        """The two connections of one attempt: the main one, whose last will writes ``offline``
        on the aggregate (the others put ``online`` back, see presence.py), and an idle
        presence connection whose last will marks this instance alone ``offline``."""
        main = SinkClient.fresh(
            address,
            client_id=self.presence.instance,
            will=aiomqtt.Will(self.topics.status, STATUS_OFFLINE, qos=1, retain=True),
            tls=tls,
            window=window,
        )
        presence = SinkClient.fresh(
            address,
            client_id=f"{self.presence.instance}-presence",
            will=aiomqtt.Will(self.presence.own_topic, STATUS_OFFLINE, qos=1, retain=True),
            tls=tls,
            window=1,
        )
        return main, presence

    @property
    def state_filter(self) -> str:
        return f"{self.topics.prefix}/+/+/state"

    async def on_connect(self, client: aiomqtt.Client, presence: aiomqtt.Client) -> None:
        """Say ``online`` (own topic and aggregate) and subscribe to what upkeep watches."""
        await presence.publish(self.presence.own_topic, STATUS_ONLINE, qos=1, retain=True)
        await client.publish(self.presence.aggregate_topic, STATUS_ONLINE, qos=1, retain=True)
        self.states.forget_broker()
        self._due.clear()
        for topic in (self.presence.filter, self.presence.aggregate_topic, self.state_filter):
            await client.subscribe(topic, qos=1)
        if len(self.states):  # a reconnect after events: check what the broker still holds
            self._check_states_at = time.monotonic() + self.state_grace_s

    def handle(self, message: aiomqtt.Message) -> bool:
        """Take one subscribed message into account; True if the drain task has work from it."""
        topic, payload = str(message.topic), message.payload
        if not isinstance(payload, bytes):
            return False
        if topic == self.presence.aggregate_topic:
            if payload == STATUS_OFFLINE.encode():  # another instance's last will
                self._fix_aggregate = True
                return True
            return False
        if message.topic.matches(self.presence.filter):
            if self.presence.observe(topic, payload):
                self.availability_changed = True
                log.info("MQTT: instances online: %s", ", ".join(self.presence.online_instances()))
                return True
            return False
        if message.topic.matches(self.state_filter) and self.states.observe(topic, payload):
            self._due[topic] = None  # the broker holds an older state than we delivered
            return True
        return False

    def next_due_s(self) -> float | None:
        """Seconds until :meth:`maintain` has scheduled work (None: nothing scheduled)."""
        if self._check_states_at is None:
            return None
        return max(0.0, self._check_states_at - time.monotonic())

    async def maintain(self, client: aiomqtt.Client, timeout_s: float) -> None:
        """Publish what upkeep owes: ``online`` on the aggregate, lost or stale states."""
        if self._fix_aggregate:
            self._fix_aggregate = False
            await client.publish(
                self.presence.aggregate_topic, STATUS_ONLINE, qos=1, retain=True, timeout=timeout_s
            )
        if self._check_states_at is not None and time.monotonic() >= self._check_states_at:
            self._check_states_at = None
            for stale in self.states.stale():
                self._due[stale.topic] = None
        while self._due:
            topic = next(iter(self._due))
            record = self.states.record(topic)
            if record is not None:
                await client.publish(topic, record.payload, qos=1, retain=True, timeout=timeout_s)
                self.states.republished += 1
                log.info("MQTT: re-published the retained state on %s", topic)
            self._due.pop(topic, None)

    async def on_close(self, client: aiomqtt.Client, presence: aiomqtt.Client) -> None:
        """A clean exit: own topic ``offline``; the aggregate too if no other instance is online."""
        try:
            await presence.publish(
                self.presence.own_topic, STATUS_OFFLINE, qos=1, retain=True, timeout=2.0
            )
            if not self.presence.others_online():
                await client.publish(
                    self.presence.aggregate_topic, STATUS_OFFLINE, qos=1, retain=True, timeout=2.0
                )
        except aiomqtt.MqttError as e:
            log.warning("MQTT: could not publish 'offline' on %s: %s", self.presence.own_topic, e)


__all__ = ["Upkeep"]
