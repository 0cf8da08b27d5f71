"""The latest state each speaker's retained topic should hold, to put back after a broker loss.

A broker that restarts without persistence (or loses its database in a crash) forgets every
retained ``state``; until that speaker talked again, a dashboard arriving later would find
nothing (issue #18, item 2). The sink remembers the newest event it delivered per speaker and,
after a reconnect, re-publishes those the broker no longer has or holds in an older version.

With several workers each remembers only what it delivered. Newer is decided by the event's
``end_s`` (session time): whenever a worker sees, on the state topics, an *older* state than
the one it delivered for that speaker, it publishes its own again, so concurrent re-publishing
after a restart settles on the newest state whatever the order.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StateRecord:
    topic: str
    end_s: float
    event_id: str
    payload: str


class LatestStates:
    """Newest delivered state per state topic (LRU-bounded) and what the broker was seen holding."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._mine: OrderedDict[str, StateRecord] = OrderedDict()
        self._seen: dict[str, tuple[float, str]] = {}  # topic -> (end_s, event_id) on the broker
        self.republished = 0

    def __len__(self) -> int:
        return len(self._mine)

    def delivered(self, topic: str, end_s: float, event_id: str, payload: str) -> None:
        """A state message was acknowledged by the broker."""
        old = self._mine.get(topic)
        if old is None or end_s >= old.end_s:
            self._mine[topic] = StateRecord(topic, end_s, event_id, payload)
        self._mine.move_to_end(topic)
        while len(self._mine) > self.maxsize:
            gone, _ = self._mine.popitem(last=False)
            self._seen.pop(gone, None)
        if topic in self._mine:
            self._seen[topic] = (end_s, event_id)

    def forget_broker(self) -> None:
        """A new connection: what the broker holds is unknown until its retained messages arrive."""
        self._seen.clear()

    def observe(self, topic: str, payload: bytes) -> bool:
        """A state message seen on the broker; True if ours for that topic is newer (re-publish)."""
        mine = self._mine.get(topic)
        if mine is None:
            return False
        try:
            ev = json.loads(payload)
            seen = (float(ev["end_s"]), str(ev["event_id"]))
        except (ValueError, KeyError, TypeError):
            seen = (float("-inf"), "")  # unreadable or cleared: ours replaces it
        self._seen[topic] = seen
        return mine.end_s > seen[0]

    def stale(self) -> list[StateRecord]:
        """Our states the broker is not known to hold in this or a newer version."""
        return [
            r for t, r in self._mine.items() if t not in self._seen or self._seen[t][0] < r.end_s
        ]

    def record(self, topic: str) -> StateRecord | None:
        return self._mine.get(topic)


__all__ = ["LatestStates", "StateRecord"]
