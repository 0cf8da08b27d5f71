"""How a worker takes entries from the consumer group: its own pending ones, idle ones, new ones.

Order of a step: the janitor when due (``XAUTOCLAIM`` of entries other consumers left idle past
``claim_idle_ms``), then this consumer's own pending entries (ID ``0``: what it had in hand when
it last died, or a batch that failed), then new entries (``>``) in a dynamic batch: up to
``max_batch``, or what arrived within ``max_wait_ms`` of the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from emomon.services.metrics import Metrics
from emomon.services.queue.redis.client import (
    Entry,
    RedisQueueError,
    as_str,
    entries_from_reply,
    entries_from_rows,
)
from emomon.services.settings import RedisSettings, WorkerSettings

log = logging.getLogger("emomon.redis")

# How long one blocking XREADGROUP waits before the loop looks at the stop flag and the janitor.
POLL_BLOCK_MS = 500


class GroupReader:
    """One consumer's view of the group: cursors, janitor schedule and queue gauges."""

    def __init__(
        self,
        client: Redis,
        settings: RedisSettings,
        worker_settings: WorkerSettings,
        consumer: str,
        metrics: Metrics,
        janitor_interval_s: float | None = None,
    ) -> None:
        self._r = client
        self.settings = settings
        self.worker_settings = worker_settings
        self.consumer = consumer
        self.metrics = metrics
        # Half the idle timeout: a dead consumer's entries wait at most ~1.5x claim_idle_ms.
        self.janitor_interval_s = (
            janitor_interval_s
            if janitor_interval_s is not None
            else min(15.0, max(0.1, settings.claim_idle_ms / 2000))
        )
        self._next_janitor = 0.0
        self._claim_cursor: bytes | str = "0-0"
        self._pending_cursor: bytes | str | None = "0"  # not None while re-reading our own PEL

    def reread_pending(self) -> None:
        """Read this consumer's pending entries again before new ones (after a failure)."""
        self._pending_cursor = "0"

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing. ID ``0``: a group created after streamers
        already wrote (first start, or a Redis restarted without persistence) still sees them."""
        try:
            await self._r.xgroup_create(
                self.settings.stream, self.settings.group, id="0", mkstream=True
            )
            log.info("created consumer group %r on %r", self.settings.group, self.settings.stream)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise RedisQueueError(
                    f"cannot create group {self.settings.group!r} on {self.settings.stream!r}: {e}"
                ) from e

    async def next_entries(self, stop: asyncio.Event | None = None) -> list[Entry]:
        """Janitor if due, else own pending entries, else one batch of new ones (maybe none)."""
        now = time.monotonic()
        if now >= self._next_janitor:
            claimed = await self._janitor()
            if claimed:
                return claimed
            self._next_janitor = now + self.janitor_interval_s
        if self._pending_cursor is not None:
            own = await self._read_own_pending()
            if own:
                return own
        return await self._read_new(stop)

    async def _xreadgroup(
        self, entry_id: bytes | str, count: int, block_ms: int | None = None
    ) -> list[Entry]:
        reply = await self._r.xreadgroup(
            self.settings.group,
            self.consumer,
            {self.settings.stream: entry_id},
            count=count,
            block=block_ms,
        )
        return entries_from_reply(reply)

    async def _read_own_pending(self) -> list[Entry]:
        """Page through our own PEL (what a previous run of this consumer, or a failed batch, left)."""
        assert self._pending_cursor is not None
        entries = await self._xreadgroup(self._pending_cursor, self.worker_settings.max_batch)
        if not entries:
            self._pending_cursor = None
            return []
        self._pending_cursor = entries[-1].id
        log.info(
            "re-reading %d pending entr%s of consumer %r",
            len(entries),
            "y" if len(entries) == 1 else "ies",
            self.consumer,
        )
        return await self._with_delivery_counts(entries)

    async def _read_new(self, stop: asyncio.Event | None) -> list[Entry]:
        """Dynamic batch: block for the first entry, then gather up to ``max_batch`` for ``max_wait_ms``."""
        ws = self.worker_settings
        raw = await self._xreadgroup(">", ws.max_batch, POLL_BLOCK_MS)
        if not raw:
            return []
        t0 = time.perf_counter()  # batch fill time counts from the first arrival, not the idle wait
        deadline = time.monotonic() + ws.max_wait_ms / 1000
        while len(raw) < ws.max_batch and not (stop is not None and stop.is_set()):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            # BLOCK 0 would mean "forever" to Redis, hence the floor of 1 ms.
            more = await self._xreadgroup(">", ws.max_batch - len(raw), max(1, left_ms))
            if not more:
                break
            raw.extend(more)
        self.metrics.observe_stage("batch_fill", time.perf_counter() - t0)
        return raw

    async def _janitor(self) -> list[Entry]:
        """Claim entries idle past ``claim_idle_ms`` (their consumer died or hung); sample gauges."""
        s = self.settings
        reply: Any = await self._r.xautoclaim(
            s.stream,
            s.group,
            self.consumer,
            min_idle_time=s.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.worker_settings.max_batch,
        )
        next_cursor, claimed, deleted = (
            reply[0],
            entries_from_rows(reply[1]),
            reply[2] if len(reply) > 2 else [],
        )
        # Cursor 0-0: scan complete; otherwise continue from there at the next step.
        self._claim_cursor = next_cursor
        if as_str(next_cursor) != "0-0":
            self._next_janitor = 0.0
        if deleted:
            # Trimmed by MAXLEN while pending: the payload is gone, Redis dropped the PEL entry.
            self.metrics.dropped.labels(reason="trimmed_while_pending").inc(len(deleted))
            log.warning(
                "%d pending entr(ies) were trimmed from the stream before processing (raise maxlen)",
                len(deleted),
            )
        await self._sample_gauges()
        if not claimed:
            return []
        self.metrics.reclaimed.inc(len(claimed))
        log.warning(
            "janitor claimed %d entr(ies) idle > %d ms from other consumers",
            len(claimed),
            s.claim_idle_ms,
        )
        return await self._with_delivery_counts(claimed)

    async def _sample_gauges(self) -> None:
        """Queue gauges, and a loud warning when MAXLEN is about to trim undelivered entries.

        ``lag`` (Redis >= 7) counts entries the group has not been handed yet: the real backlog.
        ``MAXLEN ~`` trims the oldest entries whether or not a group read them, so a backlog
        approaching ``maxlen`` means utterances are about to be lost unseen.
        """
        s = self.settings
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.xlen(s.stream)
            pipe.xinfo_groups(s.stream)
            xlen, groups = cast(list[Any], await pipe.execute())
        self.metrics.stream_entries.set(xlen)
        mine = next((g for g in groups if as_str(g["name"]) == s.group), None)
        if mine is None:
            return
        self.metrics.queue_pending.set(int(mine["pending"]))
        lag = mine.get("lag")
        if lag is not None:
            self.metrics.queue_length.set(int(lag))
            if int(lag) > s.maxlen // 2:
                log.warning(
                    "backlog of %d undelivered entries is over half of maxlen=%d: add workers or raise maxlen, "
                    "or MAXLEN trimming will drop utterances no worker has seen",
                    lag,
                    s.maxlen,
                )

    async def _with_delivery_counts(self, entries: list[Entry]) -> list[Entry]:
        """Redelivered entries carry their delivery count from XPENDING (one pipelined round trip)."""
        s = self.settings
        async with self._r.pipeline(transaction=False) as pipe:
            for e in entries:
                pipe.xpending_range(s.stream, s.group, min=e.id, max=e.id, count=1)
            rows = await pipe.execute()
        out = []
        for e, row in zip(entries, rows, strict=True):
            n = int(row[0]["times_delivered"]) if row else 1
            out.append(Entry(e.id, e.fields, n))
        return out
