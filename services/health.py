"""What ``/healthz`` answers: the process loop, Redis probed now, and every sink (issue #18, item 2).

A health answer built from cached state lies at the worst moment: three seconds into a Redis
outage the worker's last round trip still looked fine, and a wrong password looked like a
slow network forever. So :class:`RedisProbe` sends a ``PING`` on every probe, on its own
connection without retries and with a short timeout, and tells *down* from *refused the
credentials*. :class:`Health` combines it with the loop's own state and each sink's
:meth:`~emomon.services.publish.base.Sink.health`, and names every reason it is unhealthy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from emomon.services.redact import redact_url
from emomon.services.retry import outage_log_level

log = logging.getLogger("emomon.health")

RedisState = Literal["up", "down", "auth-failed"]

# Errors that mean "these credentials are not accepted" (WRONGPASS, NOAUTH) or "this ACL user
# may not run emomon's commands" (NOPERM): retrying cannot fix them, a person must.
AUTH_ERRORS: tuple[type[BaseException], ...] = (AuthenticationError, NoPermissionError)


def auth_reason(e: BaseException) -> str:
    """One line for an authentication/permission refusal, with what to check."""
    what = (
        "user lacks a permission emomon needs"
        if isinstance(e, NoPermissionError)
        else "refused the credentials"
    )
    return (
        f"Redis {what}: {redact_url(str(e)).rstrip('.')} "
        "(check the user and password in --redis-url and the ACL in docs/SECURITY.md)"
    )


def auth_log_level(failures: int) -> int:
    """ERROR for the first refusals and every 30th after (DEBUG between): loud, not a flood."""
    return logging.ERROR if outage_log_level(failures) > logging.DEBUG else logging.DEBUG


@dataclass(frozen=True, slots=True)
class RedisStatus:
    state: RedisState
    error: str | None = None


class RedisProbe:
    """``PING`` Redis on a dedicated client (no retries, ``timeout_s``) and classify the answer."""

    def __init__(self, client: Redis, timeout_s: float = 1.0) -> None:
        self._r = client
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()  # concurrent probes share one PING instead of stacking up

    @classmethod
    def for_url(cls, url: str, timeout_s: float = 1.0) -> RedisProbe:
        from emomon.services.queue.redis.client import connect

        return cls(connect(url, command_retries=0, socket_timeout_s=timeout_s), timeout_s)

    async def check(self) -> RedisStatus:
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s + 0.5):
                    await self._r.ping()
            except AUTH_ERRORS as e:
                return RedisStatus("auth-failed", auth_reason(e))
            except (RedisError, OSError, TimeoutError) as e:
                return RedisStatus("down", redact_url(f"{type(e).__name__}: {e}"))
        return RedisStatus("up")

    async def aclose(self) -> None:
        await self._r.aclose()


SyncHealth = Callable[[], tuple[bool, dict[str, Any]]]


def sink_health(
    sinks: Sequence[Any], errors: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Reasons a sink is unhealthy, and each sink's detail.

    A sink is unhealthy when its own ``health()`` says so, or when its latest ``publish``
    failed (``errors``: :attr:`emomon.services.delivery.Delivery.sink_errors`), which is how a
    sink without a ``health()`` (a JSONL file on a full disk) shows.
    """
    errors = errors or {}
    reasons: list[str] = []
    detail: dict[str, Any] = {}
    for sink in sinks:
        name = str(getattr(sink, "name", type(sink).__name__))
        probe = getattr(sink, "health", None)
        ok, info = probe() if callable(probe) else (True, {})
        if ok and name in errors:
            ok, info = False, {**info, "reason": errors[name]}
        detail[name] = {"ok": ok, **info}
        if not ok:
            reasons.append(f"sink {name}: {info.get('reason', 'unhealthy')}")
    return reasons, detail


@dataclass
class Health:
    """The ``/healthz`` answer of one process: ``(ok, detail)``; awaitable, for MetricsServer.

    Args:
        loop: the serving loop's own ``health()`` (worker or producer): alive, counters.
        probe: Redis probe; None in processes without Redis.
        sinks: sinks whose ``health()`` joins the answer.
        redis_down_is_unhealthy: a worker can do nothing without Redis (503); the streamer
            buffers through an outage, so for it Redis down is reported but stays 200.
        auth_error: the loop's own last authentication refusal, if any (it saw it first).
        sink_errors: the delivery stage's failing sinks (``Delivery.sink_errors``).
    """

    loop: SyncHealth
    probe: RedisProbe | None = None
    sinks: Sequence[Any] = ()
    redis_down_is_unhealthy: bool = True
    auth_error: Callable[[], str | None] = field(default=lambda: None)
    sink_errors: Callable[[], Mapping[str, str]] = field(default=dict)

    async def __call__(self) -> tuple[bool, dict[str, Any]]:
        alive, detail = self.loop()
        reasons: list[str] = [] if alive else ["the serving loop is not running"]
        if self.probe is not None:
            status = await self.probe.check()
            detail["redis"] = status.state
            if status.error:
                detail["redis_error"] = status.error
            if status.state == "auth-failed":
                reasons.append(status.error or "Redis refused the credentials")
            elif status.state == "down" and self.redis_down_is_unhealthy:
                reasons.append(f"Redis unreachable ({status.error})")
        loop_auth = self.auth_error()
        if loop_auth and loop_auth not in reasons:
            reasons.append(loop_auth)
        sink_reasons, sink_detail = sink_health(self.sinks, self.sink_errors())
        if sink_detail:
            detail["sinks"] = sink_detail
        reasons += sink_reasons
        if reasons:
            detail["reasons"] = reasons
        return not reasons, detail


__all__ = [
    "AUTH_ERRORS",
    "Health",
    "RedisProbe",
    "RedisStatus",
    "auth_log_level",
    "auth_reason",
    "sink_health",
]
