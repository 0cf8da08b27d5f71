"""Crashes of the MQTT sink's connection task: counted, survived, and bounded (issue #18).

A bug in the drain task (before wire validation, ``speaker: 12345`` reached
``sanitize_segment``) used to end the task for good: the sink refused every later event, the
worker left them pending and dead-lettered valid utterances. :class:`CrashGuard` is the
sink's policy instead: the task is restarted on the reconnect back-off; an event that is at
the head of the outbox at two crashes in a row is the likely cause and is dropped (counted as
``poisoned``); after ``max_crashes`` in a row without a delivered batch the sink stops.
"""

from __future__ import annotations

import logging

from emomon.services.publish.base import SinkError
from emomon.services.publish.mqtt.outbox import Outbox

log = logging.getLogger(__name__)

MAX_CRASHES = 10


class CrashGuard:
    def __init__(self, outbox: Outbox, max_crashes: int = MAX_CRASHES) -> None:
        self._outbox = outbox
        self.max_crashes = max_crashes
        self.crashes = 0  # all crashes, restarted or not
        self.poisoned = 0  # events dropped because they crashed the task twice in a row
        self.streak = 0  # crashes since the task last delivered or went idle
        self.reason: str | None = None
        self._head: str | None = None  # event id at the outbox head at the last crash

    def crashed(self, e: Exception) -> str:
        """Count a crash; drop a poison event; raise SinkError past the limit. Returns a line."""
        self.crashes += 1
        self.streak += 1
        self.reason = f"{type(e).__name__}: {e}"
        log.error("MQTT: the connection task crashed; restarting it", exc_info=e)
        head = self._outbox.peek()
        head_id = head.event.event_id if head is not None else None
        if head_id is not None and head_id == self._head:
            self._outbox.drop_head()
            self.poisoned += 1
            log.error("MQTT: event %s crashed the sink twice; dropped (counted)", head_id)
            head_id = None
        self._head = head_id
        if self.streak >= self.max_crashes:
            raise SinkError(
                f"MQTT sink stopped after {self.streak} crashes in a row: {self.reason}"
            ) from e
        return f"connection task crashed ({self.reason})"

    def working(self) -> None:
        """The task delivered a batch or has nothing to do: whatever crashed it is over."""
        self.streak = 0
        self.reason = self._head = None

    @property
    def restarting(self) -> str | None:
        """Why the sink is not healthy yet after a crash, or None."""
        return f"restarting after {self.streak} crash(es): {self.reason}" if self.streak else None


__all__ = ["MAX_CRASHES", "CrashGuard"]
