"""Which emomon instances are online, per instance and in aggregate (issue #18, item 2).

Every sink process is one *instance* with its own retained availability topic,
``{prefix}/status/{instance}``: ``online`` while it is connected, ``offline`` on a clean exit
and, through the broker's last will, on a crash. So a killed worker marks only itself offline.

Two aggregates are derived from those topics:

* Home Assistant's own: each discovery config lists the availability topics of the instances
  online when it was announced with ``availability_mode: any`` (HA shows the entity available
  while any of them is online); a change of that set re-announces the configs.
* ``{prefix}/status`` for everything else: ``online`` while any instance is connected. Every
  instance holds a second, tiny connection whose last will writes ``offline`` there; when a
  crashed instance was not the last one, the live ones see that ``offline`` and put ``online``
  back at once, so the retained value is ``offline`` only when no instance is left.
"""

from __future__ import annotations

import os
import socket

from emomon.services.publish.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, sanitize_segment

# HA lists every topic in each config; a handful is plenty to stay available across restarts.
MAX_LISTED_INSTANCES = 8


def default_instance_id() -> str:
    """``emomon-<host>-<pid>``: unique per process, readable in an MQTT explorer."""
    return sanitize_segment(f"emomon-{socket.gethostname()}-{os.getpid()}")


class Presence:
    """The instances this one has seen on ``{prefix}/status/+`` and whether each is online."""

    def __init__(self, prefix: str, instance: str) -> None:
        self.prefix = prefix
        self.instance = sanitize_segment(instance)
        self._online: dict[str, bool] = {self.instance: True}

    @property
    def own_topic(self) -> str:
        return self.topic(self.instance)

    def topic(self, instance: str) -> str:
        return f"{self.prefix}/status/{instance}"

    @property
    def filter(self) -> str:
        return f"{self.prefix}/status/+"

    @property
    def aggregate_topic(self) -> str:
        return f"{self.prefix}/status"

    def observe(self, topic: str, payload: bytes) -> bool:
        """Record an instance's status message; True if the set of online instances changed."""
        instance = topic[len(self.prefix) + len("/status/") :]
        if not instance or "/" in instance or instance == self.instance:
            return False  # our own retained message, or not an instance topic
        before = self.online_instances()
        if payload == STATUS_ONLINE.encode():
            self._online[instance] = True
        elif payload in (STATUS_OFFLINE.encode(), b""):  # b"": retained message cleared
            self._online.pop(instance, None)
        return self.online_instances() != before

    def online_instances(self) -> list[str]:
        """This instance first, then the others online, sorted."""
        others = sorted(i for i, up in self._online.items() if up and i != self.instance)
        return [self.instance, *others]

    def others_online(self) -> bool:
        return len(self.online_instances()) > 1

    def availability_topics(self) -> list[str]:
        """The topics a discovery config lists now (own first, at most MAX_LISTED_INSTANCES)."""
        return [self.topic(i) for i in self.online_instances()[:MAX_LISTED_INSTANCES]]


__all__ = ["MAX_LISTED_INSTANCES", "Presence", "default_instance_id"]
