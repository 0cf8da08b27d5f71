"""The streamer's half (``emomon stream``): a bounded local buffer in front of ``XADD``.

Audio capture calls :meth:`RedisProducer.offer`, which never waits on the network; a background
task drains the buffer in pipelined batches and, while Redis is away, retries on the back-off
policy while the buffer holds the backlog. When the buffer is full the *oldest* utterance is
dropped (a live monitor values the present over the past) and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from emomon.services.health import AUTH_ERRORS, auth_log_level, auth_reason
from emomon.services.metrics import Metrics
from emomon.services.queue import wire
from emomon.services.queue.redis.client import TRANSIENT_ERRORS
from emomon.services.retry import Backoff, RetryPolicy
from emomon.services.settings import RedisSettings
from emomon.streamer.utterance import Utterance

log = logging.getLogger("emomon.redis")


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
        backoff: Backoff | None = None,
        batch_max: int = 64,
        with_frames: bool = True,
    ) -> None:
        self._r = client
        self.with_frames = with_frames  # ship the ASR pass's encoder frames (see wire.py)
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.retry = RetryPolicy(log, backoff, self.metrics.redis_errors.labels(op="xadd"))
        self.batch_max = batch_max
        self._buf: deque[tuple[Utterance, float]] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.last_ok_monotonic: float | None = None
        self.auth_error: str | None = None  # Redis refused our credentials or ACL (unhealthy)
        self.produced = 0
        self.dropped = 0

    @property
    def failures(self) -> int:
        """Consecutive failed flushes; 0 = Redis was reachable at the last attempt."""
        return self.retry.failures

    @property
    def backoff(self) -> Backoff:
        return self.retry.backoff

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
                await self._write(batch)
            except AUTH_ERRORS as e:
                # No retry fixes a wrong password: /healthz turns 503 with this reason; the
                # buffer keeps the newest utterances until a person fixes the credentials.
                self.auth_error = auth_reason(e)
                self._requeue(batch)
                await self.retry.wait_after_failure(
                    self.auth_error, level=auth_log_level(self.failures + 1)
                )
                continue
            except TRANSIENT_ERRORS as e:
                self._requeue(batch)
                await self.retry.wait_after_failure(
                    f"Redis unreachable ({type(e).__name__}: {e}); "
                    f"{len(self._buf)} utterance(s) buffered"
                )
                continue
            except ResponseError as e:
                # OOM under maxmemory/noeviction, WRONGTYPE at the key: hold the buffer, retry, shout.
                self._requeue(batch)
                await self.retry.wait_after_failure(
                    f"Redis refused XADD to {self.settings.stream!r}: {e}; utterances stay buffered",
                    level=logging.ERROR,
                )
                continue
            self.retry.succeeded()
            self.auth_error = None
            self._written(batch, t0)

    async def _write(self, batch: list[tuple[Utterance, float]]) -> None:
        """One pipelined round trip of XADDs, trimming the stream to about ``maxlen``."""
        async with self._r.pipeline(transaction=False) as pipe:
            for utt, _ in batch:
                pipe.xadd(
                    self.settings.stream,
                    wire.encode(utt, self.with_frames),
                    maxlen=self.settings.maxlen,
                    approximate=True,
                )
            await pipe.execute()

    def _written(self, batch: list[tuple[Utterance, float]], t0: float) -> None:
        """Count a batch that reached Redis and time how long it waited and took."""
        now = time.monotonic()
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
        the streamer would throw its buffer away, so the probe stays 200 and reports it
        (:class:`~emomon.services.health.Health` adds the live probe and credential refusals)."""
        alive = self._task is not None and not self._task.done()
        return alive, {
            "redis": "down" if self.failures else "up",
            "buffered": self.buffered,
            "dropped": self.dropped,
            "produced": self.produced,
        }
