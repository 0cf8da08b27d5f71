"""MQTT sink: per-speaker emotion events for dashboards and home automation (issue #5).

The package, in the order an event travels:

- :mod:`.topics` - topic layout and making names safe as topic levels;
- :mod:`.outbox` - the bounded queue of events not yet acknowledged;
- :mod:`.client` - broker URL, TLS, reconnect policy, the aiomqtt client;
- :mod:`.sink` - :class:`MqttSink`, which owns the connection and drains the outbox.
"""

from emomon.services.publish.mqtt.client import BrokerAddress, ReconnectPolicy, parse_mqtt_url
from emomon.services.publish.mqtt.outbox import Outbox, PendingEvent
from emomon.services.publish.mqtt.sink import MqttSink
from emomon.services.publish.mqtt.topics import (
    MAX_SEGMENT_BYTES,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Topics,
    sanitize_segment,
    validate_prefix,
)

__all__ = [
    "MAX_SEGMENT_BYTES",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "BrokerAddress",
    "MqttSink",
    "Outbox",
    "PendingEvent",
    "ReconnectPolicy",
    "Topics",
    "parse_mqtt_url",
    "sanitize_segment",
    "validate_prefix",
]
