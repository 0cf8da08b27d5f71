"""The Redis client both halves use, the errors they share, and stream replies as :class:`Entry`."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from emomon.services.redact import redact_url
from emomon.services.retry import default_backoff

# Errors that mean "Redis is not reachable right now": retried on the back-off policy, never fatal.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)


class RedisQueueError(RuntimeError):
    """The Redis transport cannot work as configured (bad URL, wrong type at the stream key)."""


def default_consumer_name() -> str:
    """``host-pid``: unique per process. Give a *stable* name (``--consumer``) to a worker that is
    restarted in place (a compose service, a systemd unit) so it re-reads its own pending entries
    at start instead of waiting for another worker's janitor."""
    return f"{socket.gethostname()}-{os.getpid()}"


def connect(url: str, *, command_retries: int = 0, socket_timeout_s: float = 5.0) -> Redis:
    """A binary-safe client (PCM stays bytes). ``command_retries`` is redis-py's own per-command
    ``Retry``; the producer uses 0 so that an outage reaches its buffer at once instead of
    stalling inside the client, the worker a few to ride out a failover blip."""
    # The shared back-off has the compute()/reset() redis-py calls, without subclassing its ABC
    # (services/retry.py stays free of redis imports).
    backoff = default_backoff() if command_retries else NoBackoff()
    retry = Retry(backoff, command_retries)  # type: ignore[arg-type]
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
        # redis-py's own message may quote the URL too
        raise RedisQueueError(f"invalid Redis URL {redact_url(url)!r}: {redact_url(str(e))}") from e


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: its id, raw fields, and how many times the group delivered it."""

    id: bytes
    fields: dict[bytes, bytes]
    deliveries: int = 1


def entry_time_ms(entry_id: bytes | str) -> int:
    """The wall-clock milliseconds Redis wrote into an entry id (``<ms>-<seq>``)."""
    return int(as_str(entry_id).split("-", 1)[0])


def as_str(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def entries_from_rows(rows: Any) -> list[Entry]:
    """``[(id, fields), ...]`` as :class:`Entry`; a deleted entry's fields come back empty/None."""
    return [Entry(eid, dict(fields) if fields else {}) for eid, fields in rows or []]


def entries_from_reply(reply: Any) -> list[Entry]:
    """The entries of a one-stream XREAD(GROUP) reply, RESP2 list or RESP3 map shaped."""
    if not reply:
        return []
    rows = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return entries_from_rows(rows)
