"""The fusion worker's half (``emomon worker``): one consumer of the group, acking what was delivered.

``XACK`` happens only after the delivery stage handed the events to every sink (at-least-once;
events carry a stable id so consumers drop duplicates). Undecodable entries, and entries whose
delivery count reaches ``max_deliveries``, go to the dead-letter stream with a reason,
atomically with their ``XACK``. Which entries to read next is :class:`GroupReader`'s job, what to
do with a batch :class:`~emomon.services.delivery.Delivery`'s; this class is the transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from emomon.services.context import ContextStore
from emomon.services.delivery import Classifier, Delivery
from emomon.services.health import AUTH_ERRORS, auth_log_level, auth_reason
from emomon.services.metrics import Metrics
from emomon.services.publish.base import Sink
from emomon.services.queue import wire
from emomon.services.queue.redis.client import (
    TRANSIENT_ERRORS,
    Entry,
    RedisQueueError,
    as_str,
    default_consumer_name,
    entry_time_ms,
)
from emomon.services.queue.redis.heartbeat import Heartbeat
from emomon.services.queue.redis.reader import GroupReader
from emomon.services.retry import Backoff, RetryPolicy, sleep_unless
from emomon.services.settings import RedisSettings, WorkerSettings
from emomon.streamer.utterance import Utterance

log = logging.getLogger("emomon.redis")


class RedisStreamWorker:
    """One consumer in the group; see the module docstring for the delivery guarantees."""

    def __init__(
        self,
        client: Redis,
        settings: RedisSettings,
        worker_settings: WorkerSettings,
        classifier: Classifier,
        sinks: Sequence[Sink],
        *,
        consumer: str | None = None,
        metrics: Metrics | None = None,
        context: ContextStore | None = None,
        backoff: Backoff | None = None,
        janitor_interval_s: float | None = None,
    ) -> None:
        self._r = client
        self.settings = settings
        self.worker_settings = worker_settings
        self.consumer = consumer or settings.consumer or default_consumer_name()
        self.metrics = metrics or Metrics()
        self.delivery = Delivery(classifier, sinks, context, self.metrics)
        self.reader = GroupReader(
            client, settings, worker_settings, self.consumer, self.metrics, janitor_interval_s
        )
        self.redis_retry = RetryPolicy(log, backoff, self.metrics.redis_errors.labels(op="worker"))
        # batches that left entries pending: re-read after a growing pause, no log of their own
        self.processing_retry = RetryPolicy(log, backoff, recovery_message=None)
        # A live worker's entries never look idle to the janitors (heartbeat.py, issue #18).
        self.heartbeat = Heartbeat(
            client,
            settings.stream,
            settings.group,
            self.consumer,
            min(settings.heartbeat_ms, settings.claim_idle_ms / 3) / 1000,
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_batch_monotonic: float | None = None
        self.dead_lettered = 0
        self.auth_error: str | None = None  # Redis refused our credentials or ACL (unhealthy)
        self.paused: str | None = None  # why this worker takes no entries (an unhealthy sink)

    @property
    def backoff(self) -> Backoff:
        return self.redis_retry.backoff

    @backoff.setter
    def backoff(self, backoff: Backoff) -> None:
        self.redis_retry.backoff = self.processing_retry.backoff = backoff

    @property
    def events_out(self) -> int:
        """Events every sink took (their entries were acked, or are about to be)."""
        return self.delivery.events

    # -- lifecycle --------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        await self.reader.ensure_group()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; the batch in hand is finished and acked before returning."""
        self._task = asyncio.current_task()
        self._stop = stop
        log.info(
            "worker %r reading %r as group %r (max_batch=%d, max_wait_ms=%d, claim_idle_ms=%d)",
            self.consumer,
            self.settings.stream,
            self.settings.group,
            self.worker_settings.max_batch,
            self.worker_settings.max_wait_ms,
            self.settings.claim_idle_ms,
        )
        beating = asyncio.create_task(self.heartbeat.run(stop), name="redis-heartbeat")
        try:
            await self._serve(stop)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        log.info(
            "worker %r stopped: %d events out, %d dead-lettered",
            self.consumer,
            self.events_out,
            self.dead_lettered,
        )

    def _unhealthy_sink(self) -> str | None:
        """The first sink whose own ``health()`` is bad (refused, restarting, stopped), if any."""
        for sink in self.delivery.sinks:
            probe = getattr(sink, "health", None)
            if callable(probe):
                ok, info = probe()
                if not ok:
                    return f"sink {getattr(sink, 'name', sink)}: {info.get('reason', 'unhealthy')}"
        return None

    async def _pause_while_a_sink_is_unhealthy(self, stop: asyncio.Event) -> bool:
        """Take no entries while a sink cannot deliver, and let go of the held ones.

        Why: entries taken now would fail or pile up in a sink that cannot deliver, and each
        re-read would burn a delivery until valid utterances are dead-lettered. Paused, this
        worker stops its heartbeat, so after ``claim_idle_ms`` a healthy worker reclaims what it
        held; its /healthz is 503 meanwhile. Returns True while paused.
        """
        reason = self._unhealthy_sink()
        if reason is None:
            if self.paused is not None:
                log.warning("%s recovered; taking entries again", self.paused.split(":")[0])
                self.paused = None
                self.heartbeat.paused = False
                self.reader.reread_pending()
            return False
        if self.paused is None:
            log.error(
                "%s; taking no entries until it recovers (held ones go to other workers after "
                "claim_idle_ms)",
                reason,
            )
        self.paused = reason
        self.heartbeat.paused = True
        await sleep_unless(stop, 0.5)
        return True

    async def _serve(self, stop: asyncio.Event) -> None:
        group_ready = False
        while not stop.is_set():
            if await self._pause_while_a_sink_is_unhealthy(stop):
                continue
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                await self.step(stop)
                self.redis_retry.succeeded()
                self.auth_error = None
            except AUTH_ERRORS as e:
                # WRONGPASS / NOAUTH / NOPERM: no retry fixes these, a person must. Say so
                # loudly (health turns 503 with this reason) and keep trying at the capped pace,
                # so a corrected ACL is picked up without a restart.
                self.auth_error = auth_reason(e)
                self.reader.reread_pending()
                await self.redis_retry.wait_after_failure(
                    self.auth_error, stop, level=auth_log_level(self.redis_retry.failures + 1)
                )
            except TRANSIENT_ERRORS as e:
                # Whatever was in hand is pending again: re-read it first.
                self.reader.reread_pending()
                await self.redis_retry.wait_after_failure(
                    f"Redis unreachable ({type(e).__name__}: {e})", stop
                )
            except ResponseError as e:
                if "NOGROUP" in str(e):  # Redis restarted empty, or someone deleted the group
                    log.warning("consumer group missing (%s); re-creating it", e)
                    group_ready = False
                    continue
                if "WRONGTYPE" in str(e):  # the key holds something else: configuration, say so
                    raise RedisQueueError(
                        f"key {self.settings.stream!r} or {self.settings.dead_letter_stream!r} is not a "
                        f"stream ({e}); choose other names with --stream / --dead-letter-stream"
                    ) from e
                # OOM (maxmemory), READONLY (failover in progress), BUSY: the server's state, not
                # ours; the batch in hand stays pending, so back off and try again.
                self.reader.reread_pending()
                await self.redis_retry.wait_after_failure(f"Redis refused a command ({e})", stop)

    def health(self) -> tuple[bool, dict[str, Any]]:
        alive = self._task is not None and not self._task.done()
        age = (
            None
            if self.last_batch_monotonic is None
            else round(time.monotonic() - self.last_batch_monotonic, 1)
        )
        return alive, {
            "consumer": self.consumer,
            "redis": "down" if self.redis_retry.failures else "up",
            "last_batch_age_s": age,
            "events": self.events_out,
            "dead_letters": self.dead_lettered,
            "held": self.heartbeat.held,
            "paused": self.paused,
        }

    # -- one step of the loop ---------------------------------------------------------------
    async def step(self, stop: asyncio.Event | None = None) -> int:
        """Handle the next entries the reader gives (janitor, own pending, new); return how many."""
        entries = await self.reader.next_entries(stop)
        return await self._handle(entries) if entries else 0

    async def _handle(self, entries: list[Entry]) -> int:
        """Decode, deliver, ack; dead-letter what cannot be processed."""
        t_read = time.time()
        self.heartbeat.hold(e.id for e in entries)
        self.metrics.consumed.inc(len(entries))
        self.metrics.batch_size.observe(len(entries))
        good: list[tuple[Entry, Utterance]] = []
        ack_now: list[bytes] = []
        for e in entries:
            if not e.fields:  # deleted/trimmed between delivery and now: nothing to process
                self.metrics.dropped.labels(reason="trimmed_while_pending").inc()
                ack_now.append(e.id)
                continue
            # XPENDING's count includes this delivery: at most max_deliveries - 1 attempts ran.
            if e.deliveries >= self.settings.max_deliveries:
                await self._dead_letter(
                    e, "max-deliveries", f"delivered {e.deliveries} times without success"
                )
                continue
            try:
                utt = wire.decode(e.fields)
            except wire.WireDecodeError as err:
                await self._dead_letter(e, err.reason, str(err))
                continue
            self.metrics.observe_stage("queue_wait", max(0.0, t_read - entry_time_ms(e.id) / 1000))
            good.append((e, utt))
        if ack_now:
            await self._r.xack(self.settings.stream, self.settings.group, *ack_now)
            self.heartbeat.release(ack_now)
        if good:
            done = await self._deliver_isolating_failures(good)
            if done < len(good):
                # Leave the failures pending; re-read them (delivery count +1) after a backoff.
                self.reader.reread_pending()
                await sleep_unless(self._stop, self.processing_retry.next_delay_s())
            else:
                self.processing_retry.succeeded()
        self.last_batch_monotonic = time.monotonic()
        return len(entries)

    async def _deliver_isolating_failures(self, good: list[tuple[Entry, Utterance]]) -> int:
        """Deliver a batch; if it fails, retry one by one to isolate the poison. Return how many were acked."""
        if await self._deliver(good):
            return len(good)
        if len(good) == 1:
            return 0
        return sum([await self._deliver([item]) for item in good])

    async def _deliver(self, items: list[tuple[Entry, Utterance]]) -> bool:
        """Hand the batch to the delivery stage; ack it if it was delivered, else leave it pending."""
        result = await self.delivery.deliver([u for _, u in items])
        if result.classify_error is not None:
            # The model is third-party code: any failure leaves the entries pending, counted,
            # redelivered with a rising delivery count until max_deliveries dead-letters them.
            log.error(
                "classifying %d utterance(s) failed; they stay pending for redelivery",
                len(items),
                exc_info=result.classify_error,
            )
            self.metrics.processing_errors.labels(stage="classify").inc()
            return False
        if result.missing_utterance_ids:
            log.error(
                "classifier returned no event for %d utterance(s) (e.g. %s); leaving them pending",
                len(result.missing_utterance_ids),
                result.missing_utterance_ids[0],
            )
            return False
        if result.sink_failures:
            # Redelivery re-publishes to every sink; consumers drop the duplicates by event id.
            log.error(
                "a sink refused some of %d event(s); the utterances stay pending for redelivery",
                len(result.events),
            )
            self.metrics.processing_errors.labels(stage="publish").inc()
            return False
        t0 = time.perf_counter()
        await self._r.xack(self.settings.stream, self.settings.group, *[e.id for e, _ in items])
        self.heartbeat.release(e.id for e, _ in items)
        self.metrics.observe_stage("ack", time.perf_counter() - t0)
        return True

    async def _dead_letter(self, e: Entry, reason: str, detail: str) -> None:
        """Move ``e`` to the dead-letter stream with why, and ack it, in one MULTI/EXEC.

        Atomic so a crash between the two neither loses the entry nor dead-letters it twice.
        The original fields are kept (prefixed ``orig.``) for inspection or a manual replay.
        (On Redis Cluster, give both stream names the same hash tag, e.g. ``{emomon}:utterances``.)
        """
        s = self.settings
        record: dict[FieldT, EncodableT] = {
            "reason": reason,
            "detail": detail[:1000],
            "source_stream": s.stream,
            "source_id": e.id,
            "group": s.group,
            "consumer": self.consumer,
            "deliveries": e.deliveries,
            "failed_at": f"{time.time():.3f}",
        }
        for k, v in e.fields.items():
            record[b"orig." + (k if isinstance(k, bytes) else str(k).encode())] = v
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.xadd(s.dead_letter_stream, record, maxlen=s.maxlen, approximate=True)
            pipe.xack(s.stream, s.group, e.id)
            await pipe.execute()
        self.heartbeat.release([e.id])
        self.dead_lettered += 1
        self.metrics.dead_letters.labels(reason=reason).inc()
        log.warning(
            "entry %s dead-lettered to %r: %s (%s)",
            as_str(e.id),
            s.dead_letter_stream,
            reason,
            detail,
        )
