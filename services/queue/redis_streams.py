"""Redis Streams transport for the distributed mode: streamers ``XADD``, fusion workers ``XREADGROUP``.

Two halves, one per command:

* :class:`RedisProducer` (``emomon stream``): a bounded local buffer in front of ``XADD``. Audio
  capture calls :meth:`RedisProducer.offer`, which never waits on the network; a background task
  drains the buffer in pipelined batches and, while Redis is away, retries on a backoff *policy*
  (redis-py's ``ExponentialWithJitterBackoff``) while the buffer holds the backlog. When the
  buffer is full the *oldest* utterance is dropped (a live monitor values the present over the
  past) and counted.
* :class:`RedisStreamWorker` (``emomon worker``): one consumer of a consumer group. It first
  re-reads its own pending entries (ID ``0``, what it had in hand when it last died), then new
  ones (``>``) in dynamic batches (``max_batch`` or ``max_wait_ms`` after the first arrival); a
  janitor step claims (``XAUTOCLAIM``) entries left idle by dead consumers. ``XACK`` happens only after
  the events were handed to every sink (at-least-once; events carry a stable id so consumers
  drop duplicates). Undecodable entries, and entries whose delivery count reaches
  ``max_deliveries``, go to the dead-letter stream with a reason, atomically with their ``XACK``.

See docs/DISTRIBUTED.md for the failure model and the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from emomon.services.context import ContextStore
from emomon.services.events import EmotionEvent
from emomon.services.metrics import Metrics
from emomon.services.publish.base import Sink
from emomon.services.queue import wire
from emomon.services.settings import RedisSettings, WorkerSettings
from emomon.streamer.utterance import Utterance

log = logging.getLogger("emomon.redis")

# Errors that mean "Redis is not reachable right now": retried on the backoff policy, never fatal.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)

# How long one blocking XREADGROUP waits before the loop looks at the stop flag and the janitor.
_POLL_BLOCK_MS = 500


class RedisQueueError(RuntimeError):
    """The Redis transport cannot work as configured (bad URL, wrong type at the stream key)."""


def default_backoff() -> AbstractBackoff:
    """The reconnect policy of both halves: 50 ms doubling to 2 s, full jitter against herds."""
    return ExponentialWithJitterBackoff(cap=2.0, base=0.05)


def default_consumer_name() -> str:
    """``host-pid``: unique per process. Give a *stable* name (``--consumer``) to a worker that is
    restarted in place (a compose service, a systemd unit) so it re-reads its own pending entries
    at start instead of waiting for another worker's janitor."""
    return f"{socket.gethostname()}-{os.getpid()}"


def connect(url: str, *, command_retries: int = 0, socket_timeout_s: float = 5.0) -> Redis:
    """A binary-safe client (PCM stays bytes). ``command_retries`` is redis-py's own per-command
    ``Retry``; the producer uses 0 so that an outage reaches its buffer at once instead of
    stalling inside the client, the worker a few to ride out a failover blip."""
    retry = (
        Retry(NoBackoff(), 0) if command_retries == 0 else Retry(default_backoff(), command_retries)
    )
    try:
        return Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=2.0,
            socket_timeout=socket_timeout_s,
            retry=retry,
            health_check_interval=30,
        )
    except ValueError as e:
        raise RedisQueueError(f"invalid Redis URL {url!r}: {e}") from e


def _outage_level(failures: int) -> int:
    """WARNING for the first attempts of an outage and every 30th after; DEBUG in between, so a
    long outage (retries every 2 s) does not flood the log."""
    return logging.WARNING if failures <= 3 or failures % 30 == 0 else logging.DEBUG


def _id_ms(entry_id: bytes | str) -> int:
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.split("-", 1)[0])


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _rows(rows: Any) -> list[Entry]:
    """``[(id, fields), ...]`` as :class:`Entry`; a deleted entry's fields come back empty/None."""
    return [Entry(eid, dict(fields) if fields else {}) for eid, fields in rows or []]


def _entries(reply: Any) -> list[Entry]:
    """The entries of a one-stream XREAD(GROUP) reply, RESP2 list or RESP3 map shaped."""
    if not reply:
        return []
    rows = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return _rows(rows)


# --------------------------------------------------------------------------------------------
# Producer (emomon stream)
# --------------------------------------------------------------------------------------------


class RedisProducer:
    """Bounded, non-blocking writer of utterances to the stream.

    Overflow policy: ``settings.buffer_size`` bounds the queued utterances (plus at most one batch
    of ``batch_max`` in flight); an :meth:`offer` on a full buffer drops the oldest queued
    utterance, counted in ``emomon_dropped_total{reason="buffer_full"}`` and logged (first drop,
    then every 100th). A batch whose ``XADD`` failed goes back to the front of the buffer, so
    order is kept and nothing that fits is lost; if the buffer filled meanwhile, the oldest beyond
    ``buffer_size`` are dropped, so what survives an outage is always the newest utterances. A connection that died mid-pipeline may have written part of
    the batch: those utterances are then written twice, which the worker side tolerates
    (stable event ids).
    """

    def __init__(
        self,
        client: Redis,
        settings: RedisSettings,
        metrics: Metrics | None = None,
        backoff: AbstractBackoff | None = None,
        batch_max: int = 64,
        with_frames: bool = True,
    ) -> None:
        self._r = client
        self.with_frames = with_frames  # ship the ASR pass's encoder frames (see wire.py)
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.backoff = backoff or default_backoff()
        self.batch_max = batch_max
        self._buf: deque[tuple[Utterance, float]] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # consecutive failed flushes; 0 = Redis reachable at the last attempt
        self.last_ok_monotonic: float | None = None
        self.produced = 0
        self.dropped = 0

    # -- the audio side ---------------------------------------------------------------------
    def offer(self, utt: Utterance) -> bool:
        """Queue ``utt`` for the stream without waiting; return False if it (or an older one) was dropped."""
        if self._closing:
            self._drop("closed", 1)
            return False
        accepted = True
        if len(self._buf) >= self.settings.buffer_size:
            self._buf.popleft()
            self._drop("buffer_full", 1)
            accepted = False
        self._buf.append((utt, time.monotonic()))
        self.metrics.buffered.set(len(self._buf) + self._inflight)
        self._wake.set()
        return accepted

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._inflight

    def _drop(self, reason: str, n: int) -> None:
        self.dropped += n
        self.metrics.dropped.labels(reason=reason).inc(n)
        if self.dropped == n or self.dropped % 100 == 0:
            log.warning(
                "dropped %d utterance(s) (%s); %d dropped so far; buffer_size=%d, Redis %s",
                n,
                reason,
                self.dropped,
                self.settings.buffer_size,
                "down" if self.failures else "up",
            )

    # -- the network side -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-producer")

    async def _run(self) -> None:
        while True:
            if not self._buf:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._buf.popleft() for _ in range(min(self.batch_max, len(self._buf)))]
            self._inflight = len(batch)
            t0 = time.perf_counter()
            try:
                async with self._r.pipeline(transaction=False) as pipe:
                    for utt, _ in batch:
                        pipe.xadd(
                            self.settings.stream,
                            wire.encode(utt, self.with_frames),
                            maxlen=self.settings.maxlen,
                            approximate=True,
                        )
                    await pipe.execute()
            except TRANSIENT_ERRORS as e:
                self._requeue(batch)
                self.failures += 1
                self.metrics.redis_errors.labels(op="xadd").inc()
                delay = self.backoff.compute(self.failures)
                log.log(
                    _outage_level(self.failures),
                    "Redis unreachable (%s: %s); %d utterance(s) buffered, retry %d in %.2fs",
                    type(e).__name__,
                    e,
                    len(self._buf),
                    self.failures,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            except ResponseError as e:
                # OOM under maxmemory/noeviction, WRONGTYPE at the key: hold the buffer, retry, shout.
                self._requeue(batch)
                self.failures += 1
                self.metrics.redis_errors.labels(op="xadd").inc()
                log.error(
                    "Redis refused XADD to %r: %s; utterances stay buffered",
                    self.settings.stream,
                    e,
                )
                await asyncio.sleep(self.backoff.compute(self.failures))
                continue
            now = time.monotonic()
            if self.failures:
                log.info("Redis reachable again after %d failed attempt(s)", self.failures)
            self.failures = 0
            self.last_ok_monotonic = now
            self._inflight = 0
            self.produced += len(batch)
            self.metrics.produced.inc(len(batch))
            self.metrics.observe_stage("xadd", time.perf_counter() - t0)
            for _, offered in batch:
                self.metrics.observe_stage("producer_buffer", now - offered)
            self.metrics.buffered.set(len(self._buf))

    def _requeue(self, batch: list[tuple[Utterance, float]]) -> None:
        """Put a failed batch back in front; drop the oldest beyond ``buffer_size`` (counted)."""
        self._buf.extendleft(reversed(batch))
        self._inflight = 0
        excess = len(self._buf) - self.settings.buffer_size
        if excess > 0:
            for _ in range(excess):
                self._buf.popleft()
            self._drop("buffer_full", excess)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything offered so far is in Redis; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.buffered:
            if self._task is None or self._task.done() or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, drain_timeout_s: float) -> None:
        """Stop accepting, give the backlog ``drain_timeout_s`` to reach Redis, count the rest as dropped."""
        self._closing = True
        self._wake.set()
        drained = await self.flush(drain_timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not drained and self.buffered:
            self._drop("shutdown", self.buffered)
            self._buf.clear()
            self._inflight = 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive while the drain task runs. Redis being away is *degraded*, not dead: restarting
        the streamer would throw its buffer away, so the probe stays 200 and reports it."""
        alive = self._task is not None and not self._task.done()
        return alive, {
            "redis": "down" if self.failures else "up",
            "buffered": self.buffered,
            "dropped": self.dropped,
            "produced": self.produced,
        }


# --------------------------------------------------------------------------------------------
# Worker (emomon worker)
# --------------------------------------------------------------------------------------------


class Classifier(Protocol):
    """What the stream worker needs from the fusion worker (``emomon.services.worker.FusionWorker``).

    ``publish`` may raise, or count failing sinks in an integer ``sink_errors`` attribute; either
    way the entries of that batch are not acked.
    """

    async def classify(self, utts: Sequence[Utterance]) -> list[EmotionEvent]: ...

    async def publish(self, events: Sequence[EmotionEvent], sinks: Sequence[Sink]) -> None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: its id, raw fields, and how many times the group delivered it."""

    id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1


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
        backoff: AbstractBackoff | None = None,
        janitor_interval_s: float | None = None,
    ) -> None:
        self._r = client
        self.settings = settings
        self.worker_settings = worker_settings
        self.classifier = classifier
        self.sinks = list(sinks)
        self.consumer = consumer or settings.consumer or default_consumer_name()
        self.metrics = metrics or Metrics()
        self.context = context
        self.backoff = backoff or default_backoff()
        # Half the idle timeout: a dead consumer's entries wait at most ~1.5x claim_idle_ms.
        self.janitor_interval_s = (
            janitor_interval_s
            if janitor_interval_s is not None
            else min(15.0, max(0.1, settings.claim_idle_ms / 2000))
        )
        self._next_janitor = 0.0
        self._claim_cursor: bytes | str = "0-0"
        self._pending_cursor: bytes | str | None = "0"  # not None while re-reading our own PEL
        self._failures = 0  # consecutive Redis failures of the loop
        self._processing_failures = 0  # consecutive batches that left entries pending
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_batch_monotonic: float | None = None
        self.events_out = 0
        self.dead_lettered = 0

    # -- lifecycle --------------------------------------------------------------------------
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
        group_ready = False
        while not stop.is_set():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                await self.step(stop)
                if self._failures:
                    log.info("Redis reachable again after %d failed attempt(s)", self._failures)
                self._failures = 0
            except TRANSIENT_ERRORS as e:
                self._failures += 1
                self.metrics.redis_errors.labels(op="worker").inc()
                delay = self.backoff.compute(self._failures)
                log.log(
                    _outage_level(self._failures),
                    "Redis unreachable (%s: %s); retry %d in %.2fs",
                    type(e).__name__,
                    e,
                    self._failures,
                    delay,
                )
                # Whatever was in hand is pending again: re-read it first.
                self._pending_cursor = "0"
                await _sleep_unless(stop, delay)
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
                self._failures += 1
                self.metrics.redis_errors.labels(op="worker").inc()
                delay = self.backoff.compute(self._failures)
                log.log(
                    _outage_level(self._failures),
                    "Redis refused a command (%s); retry in %.2fs",
                    e,
                    delay,
                )
                self._pending_cursor = "0"
                await _sleep_unless(stop, delay)
        log.info(
            "worker %r stopped: %d events out, %d dead-lettered",
            self.consumer,
            self.events_out,
            self.dead_lettered,
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        alive = self._task is not None and not self._task.done()
        age = (
            None
            if self.last_batch_monotonic is None
            else round(time.monotonic() - self.last_batch_monotonic, 1)
        )
        return alive, {
            "consumer": self.consumer,
            "redis": "down" if self._failures else "up",
            "last_batch_age_s": age,
            "events": self.events_out,
            "dead_letters": self.dead_lettered,
        }

    # -- one step of the loop ---------------------------------------------------------------
    async def step(self, stop: asyncio.Event | None = None) -> int:
        """Janitor if due, else own pending entries, else one batch of new ones; return entries handled."""
        now = time.monotonic()
        if now >= self._next_janitor:
            claimed = await self._janitor()
            if claimed:
                return await self._handle(claimed)
            self._next_janitor = now + self.janitor_interval_s
        if self._pending_cursor is not None:
            own = await self._read_own_pending()
            if own:
                return await self._handle(own)
        entries = await self._read_new(stop)
        return await self._handle(entries) if entries else 0

    async def _read_own_pending(self) -> list[Entry]:
        """Page through our own PEL (what a previous run of this consumer, or a failed batch, left)."""
        assert self._pending_cursor is not None
        entries = _entries(
            await self._r.xreadgroup(
                self.settings.group,
                self.consumer,
                {self.settings.stream: self._pending_cursor},
                count=self.worker_settings.max_batch,
            )
        )
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
        raw = _entries(
            await self._r.xreadgroup(
                self.settings.group,
                self.consumer,
                {self.settings.stream: ">"},
                count=ws.max_batch,
                block=_POLL_BLOCK_MS,
            )
        )
        if not raw:
            return []
        t0 = time.perf_counter()  # batch fill time counts from the first arrival, not the idle wait
        deadline = time.monotonic() + ws.max_wait_ms / 1000
        while len(raw) < ws.max_batch and not (stop is not None and stop.is_set()):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            # BLOCK 0 would mean "forever" to Redis, hence the floor of 1 ms.
            more = _entries(
                await self._r.xreadgroup(
                    self.settings.group,
                    self.consumer,
                    {self.settings.stream: ">"},
                    count=ws.max_batch - len(raw),
                    block=max(1, left_ms),
                )
            )
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
            _rows(reply[1]),
            reply[2] if len(reply) > 2 else [],
        )
        # Cursor 0-0: scan complete; otherwise continue from there at the next step.
        self._claim_cursor = next_cursor
        if _s(next_cursor) != "0-0":
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
        entries = claimed
        self.metrics.reclaimed.inc(len(entries))
        log.warning(
            "janitor claimed %d entr(ies) idle > %d ms from other consumers",
            len(entries),
            s.claim_idle_ms,
        )
        return await self._with_delivery_counts(entries)

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
        mine = next((g for g in groups if _s(g["name"]) == s.group), None)
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

    # -- processing -------------------------------------------------------------------------
    async def _handle(self, entries: list[Entry]) -> int:
        """Decode, classify, publish, remember context, ack; dead-letter what cannot be processed."""
        t_read = time.time()
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
            self.metrics.observe_stage("queue_wait", max(0.0, t_read - _id_ms(e.id) / 1000))
            good.append((e, utt))
        if ack_now:
            await self._r.xack(self.settings.stream, self.settings.group, *ack_now)
        if good:
            done = await self._classify_publish(good)
            if done < len(good):
                # Leave the failures pending; re-read them (delivery count +1) after a backoff.
                self._pending_cursor = "0"
                self._processing_failures += 1
                await _sleep_unless(self._stop, self.backoff.compute(self._processing_failures))
            else:
                self._processing_failures = 0
        self.last_batch_monotonic = time.monotonic()
        return len(entries)

    async def _classify_publish(self, good: list[tuple[Entry, Utterance]]) -> int:
        """Process a batch; if it fails, retry one by one to isolate the poison. Return how many were acked."""
        if await self._process(good):
            return len(good)
        if len(good) == 1:
            return 0
        return sum([await self._process([item]) for item in good])

    async def _process(self, items: list[tuple[Entry, Utterance]]) -> bool:
        utts = [u for _, u in items]
        t0 = time.perf_counter()
        try:
            events = await self.classifier.classify(utts)
        except Exception:
            # The model is third-party code: any failure leaves the entries pending, counted,
            # redelivered with a rising delivery count until max_deliveries dead-letters them.
            log.exception(
                "classifying %d utterance(s) failed; they stay pending for redelivery", len(utts)
            )
            self.metrics.processing_errors.labels(stage="classify").inc()
            return False
        self.metrics.observe_stage("classify", time.perf_counter() - t0)
        by_uid = {ev.utterance_id: ev for ev in events}
        missing = [u.utterance_id for u in utts if u.utterance_id not in by_uid]
        if missing:
            log.error(
                "classifier returned no event for %d utterance(s) (e.g. %s); leaving them pending",
                len(missing),
                missing[0],
            )
            return False
        t1 = time.perf_counter()
        # FusionWorker.publish counts a failing sink in ``sink_errors`` and goes on with the others;
        # a rise means some sink did not take an event, so the entries are not acked (redelivery
        # re-publishes to every sink; consumers drop the duplicates by event id).
        sink_errors = getattr(self.classifier, "sink_errors", 0)
        try:
            await self.classifier.publish(events, self.sinks)
        except Exception:  # a sink raised through publish: not acked, redelivered later
            log.exception("publishing %d event(s) failed; the utterances stay pending", len(events))
            self.metrics.processing_errors.labels(stage="publish").inc()
            return False
        if getattr(self.classifier, "sink_errors", 0) > sink_errors:
            log.error(
                "a sink refused some of %d event(s); the utterances stay pending for redelivery",
                len(events),
            )
            self.metrics.processing_errors.labels(stage="publish").inc()
            return False
        now = time.time()
        self.metrics.observe_stage("publish", time.perf_counter() - t1)
        for u in utts:
            self.metrics.observe_stage("end_to_end", now - u.end_wall)
        if self.context is not None:
            await self.context.append(events)
        t2 = time.perf_counter()
        await self._r.xack(self.settings.stream, self.settings.group, *[e.id for e, _ in items])
        self.metrics.observe_stage("ack", time.perf_counter() - t2)
        self.metrics.events.inc(len(events))
        self.events_out += len(events)
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
        self.dead_lettered += 1
        self.metrics.dead_letters.labels(reason=reason).inc()
        log.warning(
            "entry %s dead-lettered to %r: %s (%s)", _s(e.id), s.dead_letter_stream, reason, detail
        )


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


__all__ = [
    "TRANSIENT_ERRORS",
    "Classifier",
    "Entry",
    "RedisProducer",
    "RedisQueueError",
    "RedisStreamWorker",
    "connect",
    "default_backoff",
    "default_consumer_name",
]
