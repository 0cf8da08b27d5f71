"""One back-off policy for every Redis outage of the transport (issue #19).

The producer's drain loop and the worker's read loop both meet the same situation: a command
failed because Redis is away or refused it, and the loop must wait a little, say so without
flooding the log, and try again. :class:`RetryPolicy` is that decision, written once, in the
spirit of redis-py's ``Retry``: it counts consecutive failures, asks a back-off (exponential
with a cap and full jitter by default) how long to wait, and logs the outage and the recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff


class Backoff(Protocol):
    """What a retry needs of a back-off: seconds to wait after ``failures`` consecutive failures."""

    def compute(self, failures: int) -> float: ...


class ErrorCounter(Protocol):
    """A counter to bump on each failure (a labelled Prometheus counter)."""

    def inc(self, amount: float = 1) -> None: ...


def default_backoff() -> AbstractBackoff:
    """50 ms doubling to a 2 s cap, full jitter so many clients do not reconnect in step."""
    return ExponentialWithJitterBackoff(cap=2.0, base=0.05)


def outage_log_level(failures: int) -> int:
    """WARNING for the first attempts of an outage and every 30th after, DEBUG in between: a
    long outage retried every 2 s must not flood the log."""
    return logging.WARNING if failures <= 3 or failures % 30 == 0 else logging.DEBUG


class RetryPolicy:
    """Consecutive failures of one loop and the wait before its next attempt.

    ``backoff`` stays a public attribute so a test can swap in one that does not wait.
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
