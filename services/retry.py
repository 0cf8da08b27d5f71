"""One retry helper for every transport outage: Redis and MQTT alike (issue #19).

The Redis producer's drain loop, the Redis worker's read loop and the MQTT sink's connection
loop all meet the same situation: an attempt failed because the server is away or refused it,
and the loop must wait a little, say so without flooding the log, and try again.
:class:`RetryPolicy` is that decision, written once, in the spirit of redis-py's ``Retry``: it
counts consecutive failures, asks a :class:`Backoff` how long to wait, and logs the outage and
the recovery. :class:`ExponentialBackoff` is the one back-off both transports configure.

This module is a leaf: it imports neither redis nor aiomqtt, so either transport can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Backoff(Protocol):
    """What a retry needs of a back-off: seconds to wait after ``failures`` consecutive failures."""

    def compute(self, failures: int) -> float: ...


class ErrorCounter(Protocol):
    """A counter to bump on each failure (a labelled Prometheus counter)."""

    def inc(self, amount: float = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Exponential back-off with a cap and jitter; satisfies :class:`Backoff`.

    Why jitter: many emomon processes lose the same broker or Redis at once, and without it they
    would all come back in step. Two kinds, one per transport's historic behaviour:

    * band jitter (``jitter``): the capped delay is scaled by a random factor in
      ``[1 - jitter, 1 + jitter]``, so the mean stays on the exponential curve (MQTT);
    * full jitter (``full_jitter=True``): the delay is drawn from ``[0, grown delay]`` and
      capped *after* the draw, as redis-py's ``ExponentialWithJitterBackoff`` does; far into an
      outage most draws exceed the cap, so retries settle at about one per ``max_delay_s``.
    """

    initial_delay_s: float = 0.5  # before the first retry (the upper bound, with full jitter)
    max_delay_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # band jitter; must be 0 with full_jitter
    full_jitter: bool = False

    def __post_init__(self) -> None:
        if self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise ValueError("need 0 <= initial_delay_s <= max_delay_s")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter < 1")
        if self.full_jitter and self.jitter:
            raise ValueError("full_jitter replaces the jitter band: set jitter=0")

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt number ``attempt`` (1 = the first retry)."""
        try:
            grown = self.initial_delay_s * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # hours into an outage: the curve is far past any cap
            grown = math.inf if self.initial_delay_s else 0.0
        if self.full_jitter:
            return min(self.max_delay_s, grown * rand())
        return min(self.max_delay_s, grown) * (1 - self.jitter + 2 * self.jitter * rand())

    def compute(self, failures: int) -> float:
        """:class:`Backoff`: the delay after ``failures`` consecutive failures."""
        return self.delay_s(failures)

    def reset(self) -> None:
        """Nothing to reset (stateless); redis-py's ``Retry`` calls this before each command."""


def default_backoff() -> ExponentialBackoff:
    """The Redis outage back-off: up to 100 ms after the first failure, doubling to a 2 s cap,
    full jitter; the numbers of redis-py's ``ExponentialWithJitterBackoff(cap=2.0, base=0.05)``
    (its ``base * 2**failures`` is ``0.1 * 2**(failures - 1)``)."""
    return ExponentialBackoff(
        initial_delay_s=0.1, max_delay_s=2.0, multiplier=2.0, jitter=0.0, full_jitter=True
    )


def outage_log_level(failures: int) -> int:
    """WARNING for the first attempts of an outage and every 30th after, DEBUG in between: a
    long outage retried every 2 s must not flood the log."""
    return logging.WARNING if failures <= 3 or failures % 30 == 0 else logging.DEBUG


class RetryPolicy:
    """Consecutive failures of one loop and the wait before its next attempt.

    ``backoff`` stays a public attribute so a test can swap in one that does not wait.
    ``recovery_message`` (``%d``: the failures) is logged when an attempt ends an outage; its
    default is the Redis transport's, None logs nothing.
    """

    def __init__(
        self,
        log: logging.Logger,
        backoff: Backoff | None = None,
        errors: ErrorCounter | None = None,
        recovery_message: str | None = "Redis reachable again after %d failed attempt(s)",
    ) -> None:
        self.log = log
        self.recovery_message = recovery_message
        self.backoff: Backoff = backoff or default_backoff()
        self.errors = errors
        self.failures = 0  # 0: the last attempt worked

    def next_delay_s(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        self.failures += 1
        if self.errors is not None:
            self.errors.inc()
        return self.backoff.compute(self.failures)

    async def wait_after_failure(
        self, what: str, stop: asyncio.Event | None = None, level: int | None = None
    ) -> None:
        """Count a failure, log ``what`` went wrong with the retry plan, and wait (less if
        ``stop`` is set meanwhile). ``level`` defaults to the outage level of this failure."""
        delay_s = self.next_delay_s()
        self.log.log(
            outage_log_level(self.failures) if level is None else level,
            "%s; retry %d in %.2fs",
            what,
            self.failures,
            delay_s,
        )
        await sleep_unless(stop, delay_s)

    def succeeded(self) -> None:
        """The attempt worked: say so if it ended an outage, and start counting afresh."""
        if self.failures and self.recovery_message is not None:
            self.log.info(self.recovery_message, self.failures)
        self.failures = 0


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` gets set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
