"""The outbox: events accepted by the sink and not yet acknowledged by the broker.

:meth:`MqttSink.publish` only appends here; the connection task takes batches out, and an event
leaves for good only once every one of its messages was acknowledged. A connection loss puts
the in-flight batch back at the front, so nothing is lost to a broker restart.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass

from emomon.services.events import EmotionEvent


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An accepted event with its payload, serialised once when accepted."""

    event: EmotionEvent
    payload: str


class Outbox:
    """Bounded FIFO of events not yet acknowledged by the broker.

    Invariant (checked by the unit tests): ``queued == sent + dropped + abandoned + pending``,
    where *pending* counts both waiting and in-flight events. The bound applies to the waiting
    deque; at most one batch (``take``'s ``limit``) is in flight on top of it. Overflow drops the
    oldest waiting event, because for a live monitor the newest emotion matters most.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("outbox size must be >= 1")
        self.maxsize = maxsize
        self._waiting: collections.deque[PendingEvent] = collections.deque()
        self._in_flight = 0
        self.queued = 0
        self.sent = 0
        self.dropped = 0
        self.resent = 0  # events put back after a connection loss (sent again later)
        self.abandoned = 0  # events still pending when the sink was closed
        self.nonempty = asyncio.Event()
        self.idle = asyncio.Event()  # nothing waiting and nothing in flight
        self.idle.set()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def pending(self) -> int:
        return len(self._waiting) + self._in_flight

    def put(self, item: PendingEvent) -> int:
        """Append ``item``; return how many old events were dropped to make room (0 or 1)."""
        self.queued += 1
        self._waiting.append(item)
        self.nonempty.set()
        self.idle.clear()
        return self._trim()

    def take(self, limit: int) -> list[PendingEvent]:
        """Move up to ``limit`` of the oldest events in flight; :meth:`settle` must follow."""
        batch = [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]
        self._in_flight += len(batch)
        if not self._waiting:
            self.nonempty.clear()
        return batch

    def settle(self, batch: Sequence[PendingEvent], delivered: Sequence[bool]) -> int:
        """Count the delivered part of ``batch``; put the rest back at the front, in order.

        Returns how many events were dropped because putting them back overflowed the bound.
        """
        self._in_flight -= len(batch)
        back = [item for item, ok in zip(batch, delivered, strict=True) if not ok]
        self.sent += len(batch) - len(back)
        self.resent += len(back)
        self._waiting.extendleft(reversed(back))
        dropped = self._trim()
        if self._waiting:
            self.nonempty.set()
        elif self._in_flight == 0:
            self.idle.set()
        return dropped

    def peek(self) -> PendingEvent | None:
        """The oldest waiting event, if any."""
        return self._waiting[0] if self._waiting else None

    def drop_head(self) -> None:
        """Drop the oldest waiting event (one that keeps crashing the sink); counted as dropped."""
        if self._waiting:
            self._waiting.popleft()
            self.dropped += 1
            if not self._waiting:
                self.nonempty.clear()
                if self._in_flight == 0:
                    self.idle.set()

    def abandon(self) -> int:
        """Forget every waiting event (at close, when the broker could not take them)."""
        n = len(self._waiting)
        self._waiting.clear()
        self.abandoned += n
        self.nonempty.clear()
        if self._in_flight == 0:
            self.idle.set()
        return n

    def _trim(self) -> int:
        n = 0
        while len(self._waiting) > self.maxsize:
            self._waiting.popleft()
            n += 1
        self.dropped += n
        return n
