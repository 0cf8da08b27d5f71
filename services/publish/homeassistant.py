"""Home Assistant MQTT discovery for emomon's per-speaker emotion sensors (issue #5).

Why: Home Assistant creates an entity by itself when a retained JSON *config* message appears on
``{ha_prefix}/sensor/{object_id}/config``. emomon announces one ``sensor`` per (session, speaker):
its state is the speaker's current emotion label, its attributes the whole latest event, and it
is shown as unavailable while ``{prefix}/status`` says ``offline`` (emomon's last will).
Home Assistant publishes ``online`` on ``{ha_prefix}/status`` when it (re)starts; the sink then
announces every known speaker again, as the HA docs ask of discovery publishers.

Reference: https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and
https://www.home-assistant.io/integrations/sensor.mqtt/ .
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from emomon.services.events import load_schema

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def object_id(session: str, speaker: str) -> str:
    """``emomon_{session}_{speaker}`` restricted to what HA allows in an object id ([A-Za-z0-9_-])."""
    return _SLUG_UNSAFE.sub("_", f"emomon_{session}_{speaker}")


def device_id(session: str) -> str:
    """One HA device per session, so a session's speakers are grouped together."""
    return _SLUG_UNSAFE.sub("_", f"emomon_{session}")


def emotion_labels() -> list[str]:
    """The labels an event may carry, from the event schema, so HA's ``enum`` sensor lists exactly those."""
    schema = load_schema()
    return list(schema["properties"]["label"]["enum"])


def _version() -> str:
    try:
        return metadata.version("emomon")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def availability(topics: Sequence[str]) -> dict[str, Any]:
    """HA's availability for an entity any of several emomon instances may update.

    Each instance's retained ``online``/``offline`` topic is listed; ``availability_mode: any``
    makes HA show the entity available while at least one of them is online, so one crashed
    worker does not mark the others' sensors unavailable (issue #18, item 2).
    """
    return {
        "availability": [
            {"topic": t, "payload_available": "online", "payload_not_available": "offline"}
            for t in topics
        ],
        "availability_mode": "any",
    }


def sensor_config(
    *,
    session: str,
    speaker: str,
    state_topic: str,
    status_topic: str,
    qos: int,
    availability_topics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The discovery payload of one speaker's emotion sensor.

    ``value_template`` picks the label out of the state payload (the full event JSON) and
    ``json_attributes_topic`` exposes the rest (confidence, probabilities, text, ...) as attributes.
    ``device_class: enum`` with ``options`` lets HA offer the label in automations' drop-downs.
    No ``object_id``: recent HA releases deprecate it; the entity id follows from device and name.

    Args:
        session: the raw session id (shown in the device name).
        speaker: the raw speaker label (shown in the entity name).
        state_topic: ``{prefix}/{session}/{speaker}/state`` (already sanitised).
        status_topic: ``{prefix}/status`` carrying ``online`` / ``offline``.
        qos: the QoS HA should subscribe with.
        availability_topics: the per-instance ``{prefix}/status/{instance}`` topics (issue #18);
            given, they replace ``status_topic`` with ``availability_mode: any``.
    """
    oid = object_id(session, speaker)
    return {
        "name": f"{speaker} emotion",
        "unique_id": oid,
        "state_topic": state_topic,
        "value_template": "{{ value_json.label }}",
        "json_attributes_topic": state_topic,
        "device_class": "enum",
        "options": emotion_labels(),
        "icon": "mdi:emoticon-outline",
        "qos": qos,
        **availability(availability_topics or [status_topic]),
        "device": {
            "identifiers": [device_id(session)],
            "name": f"emomon {session}",
            "manufacturer": "emomon",
            "model": "conversation emotion monitor",
            "sw_version": _version(),
        },
        "origin": {"name": "emomon", "sw_version": _version()},
    }


def alert_object_id(session: str, speaker: str, rule: str) -> str:
    """The object id of one speaker's binary sensor for one alert rule (issue 17)."""
    return _SLUG_UNSAFE.sub("_", f"emomon_{session}_{speaker}_alert_{rule}")


def binary_sensor_config(
    *,
    session: str,
    speaker: str,
    rule: str,
    state_topic: str,
    status_topic: str,
    qos: int,
) -> dict[str, Any]:
    """The discovery payload of one alert rule's binary sensor for one speaker (issue 17).

    Its state topic is ``{prefix}/{session}/{speaker}/alert/{rule}``, retained ``ON`` while the
    rule is active and ``OFF`` once it cleared (alerts.hysteresis). It sits on the same HA device
    as the speaker's emotion sensor. Reference:
    https://www.home-assistant.io/integrations/binary_sensor.mqtt/ .
    """
    sensor = sensor_config(
        session=session,
        speaker=speaker,
        state_topic=state_topic,
        status_topic=status_topic,
        qos=qos,
    )
    for key in ("value_template", "json_attributes_topic", "device_class", "options", "icon"):
        sensor.pop(key)
    return {
        **sensor,
        "name": f"{speaker} alert {rule}",
        "unique_id": alert_object_id(session, speaker, rule),
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "problem",
        "icon": "mdi:alert-outline",
    }
