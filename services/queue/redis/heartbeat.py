"""A live worker's heartbeat on the entries it holds, so reclaim can be fast (issue #18, item 8).

Redis measures a pending entry's *idle time* from its last delivery. The janitor of every worker
(``XAUTOCLAIM``) takes entries idle past ``claim_idle_ms`` from whoever holds them, which is
right for a crashed worker and wrong for a live one still classifying a long batch: that batch
would be processed twice. With a heartbeat the two cases separate: every ``heartbeat_ms`` a
live worker resets the idle time of the entries in its hands (``XCLAIM ... JUSTID`` to itself,
which neither copies the entry nor counts a delivery). A crashed worker stops beating, so its
entries age and are reclaimed after ``claim_idle_ms``; a live one's never get that old, so
``claim_idle_ms`` can be a few seconds instead of "longer than the slowest batch".

The refresh is one Lua script, so it is atomic: an entry is refreshed only while this consumer
still owns it. A plain ``XCLAIM`` would take back an entry another worker's janitor had just
reclaimed (from a worker that was frozen, say) and both would process it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from emomon.services.queue.redis.client import TRANSIENT_ERRORS, as_str

log = logging.getLogger("emomon.redis")

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids.
# Returns the ids this consumer no longer owns (reclaimed by another, or acked meanwhile).
_REFRESH = """
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if row[1] ~= nil and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    table.insert(lost, id)
  end
end
return lost
"""


class Heartbeat:
    """Keeps the idle time of the entries in a worker's hands near zero while it runs.

    The worker :meth:`hold`\\ s entries when it reads them and :meth:`release`\\ s them when they
    are acked or dead-lettered; :meth:`run` refreshes what is held every ``interval_s``.
    """

    def __init__(
        self, client: Redis, stream: str, group: str, consumer: str, interval_s: float
    ) -> None:
        self._r = client
        self.stream, self.group, self.consumer = stream, group, consumer
        self.interval_s = interval_s
        self._held: dict[str, None] = {}  # insertion-ordered set of entry ids (str)
        self._script: Any = None  # registered at the first beat
        self.paused = False  # a paused worker lets its entries age, so others reclaim them
        self.beats = 0
        self.lost = 0  # held entries another consumer had taken (this one was too slow)
        self.errors = 0  # beats Redis refused (not outages)

    def hold(self, ids: Iterable[bytes | str]) -> None:
        for i in ids:
            self._held[as_str(i)] = None

    def release(self, ids: Iterable[bytes | str]) -> None:
        for i in ids:
            self._held.pop(as_str(i), None)

    @property
    def held(self) -> int:
        return len(self._held)

    async def beat(self) -> int:
        """Refresh every held entry once; return how many were still ours."""
        ids = list(self._held)
        if not ids:
            return 0
        if self._script is None:
            self._script = self._r.register_script(_REFRESH)
        lost = await self._script(keys=[self.stream], args=[self.group, self.consumer, *ids])
        gone = [as_str(x) for x in lost or []]
        if gone:
            self.lost += len(gone)
            self.release(gone)
            log.debug("heartbeat: %d held entr(ies) no longer ours", len(gone))
        self.beats += 1
        return len(ids) - len(gone)

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop``; Redis errors are the main loop's to report, not this task's."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            if stop.is_set():
                return
            if self.paused:
                continue
            try:
                await self.beat()
            except TRANSIENT_ERRORS as e:  # Redis away: the main loop reports the outage
                log.debug("heartbeat skipped: %s", e)
            except RedisError as e:  # e.g. NOPERM for EVALSHA: live entries would be reclaimed
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning(
                        "heartbeat failed (%s); the entries this worker holds may be reclaimed "
                        "and processed twice (docs/SECURITY.md lists the commands it needs)",
                        e,
                    )


__all__ = ["Heartbeat"]
