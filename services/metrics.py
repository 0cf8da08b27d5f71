"""Prometheus metrics and the ``/healthz`` + ``/metrics`` endpoint of a long-running emomon process.

Each process owns one :class:`Metrics` (its own ``CollectorRegistry``, no module globals), so two
workers started in one test process do not share counters. The HTTP endpoint is a tiny asyncio
server rather than ``prometheus_client.start_http_server`` because that one runs in a thread,
serves only metrics, and cannot answer a health probe from the state of the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger("emomon.metrics")

# Seconds, 0.5 ms to 30 s: Redis round trips sit at the low end, model batches at the high end.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The counters, gauges and histograms every emomon stage reports into.

    Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Stage
    names used by the distributed mode: ``xadd`` (one pipelined XADD batch), ``producer_buffer``
    (offer to written), ``queue_wait`` (XADD to XREADGROUP, by the entry id's clock),
    ``batch_fill`` (first arrival to full batch), ``classify``, ``publish``, ``ack``,
    ``end_to_end`` (end of speech to event handed to the sinks).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "emomon_stage_seconds",
            "Latency of one pipeline stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "emomon_batch_size", "Utterances per worker batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_length = Gauge(
            "emomon_queue_length",
            "Entries not yet delivered to the consumer group (XINFO GROUPS lag)",
            registry=r,
        )
        self.stream_entries = Gauge(
            "emomon_stream_entries",
            "Entries kept in the stream, acked history included (XLEN)",
            registry=r,
        )
        self.queue_pending = Gauge(
            "emomon_queue_pending",
            "Entries delivered to the consumer group but not acked (XPENDING)",
            registry=r,
        )
        self.buffered = Gauge(
            "emomon_producer_buffered", "Utterances in the streamer's local buffer", registry=r
        )
        self.produced = Counter(
            "emomon_utterances_produced_total", "Utterances written to the stream", registry=r
        )
        self.consumed = Counter(
            "emomon_utterances_consumed_total", "Stream entries read by this worker", registry=r
        )
        self.events = Counter(
            "emomon_events_total", "Emotion events handed to the sinks", registry=r
        )
        self.dropped = Counter(
            "emomon_dropped_total", "Utterances dropped, by reason", ["reason"], registry=r
        )
        self.dead_letters = Counter(
            "emomon_dead_letters_total",
            "Entries moved to the dead-letter stream, by reason",
            ["reason"],
            registry=r,
        )
        self.reclaimed = Counter(
            "emomon_reclaimed_total", "Entries claimed from idle consumers (XAUTOCLAIM)", registry=r
        )
        self.processing_errors = Counter(
            "emomon_processing_errors_total",
            "Batches whose classification or publishing failed (left pending), by stage",
            ["stage"],
            registry=r,
        )
        self.redis_errors = Counter(
            "emomon_redis_errors_total", "Failed Redis operations, by operation", ["op"], registry=r
        )

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)


HealthCheck = Callable[[], tuple[bool, dict[str, Any]] | Awaitable[tuple[bool, dict[str, Any]]]]

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class MetricsServer:
    """Serves ``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 or 503, JSON detail).

    ``health`` is called on each probe, plain or ``async`` (an async one may do I/O, e.g. the
    Redis ``PING`` of :class:`emomon.services.health.Health`; a slow one is cut off after
    ``health_timeout_s`` and answered 503). ``token``: when set, every request must carry
    ``Authorization: Bearer <token>`` (else 401); compared in constant time.
    """

    metrics: Metrics
    health: HealthCheck
    port: int = 0
    # Loopback unless configured (metrics.host, --metrics-host), optionally a token (#18).
    host: str = "127.0.0.1"
    token: str | None = field(default=None, repr=False)
    health_timeout_s: float = 3.0
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)

    async def start(self) -> int:
        """Start listening; return the bound port (useful when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "metrics and health on http://%s:%d/metrics and /healthz%s",
            self.host,
            bound,
            " (bearer token required)" if self.token else "",
        )
        if not self.token and self.host not in _LOOPBACK:
            log.warning(
                "metrics endpoint on %s without a token: anyone who can reach it reads the "
                "health detail; set metrics.token (EMOMON_METRICS__TOKEN)",
                self.host,
            )
        return bound

    def _authorized(self, request: bytes) -> bool:
        if not self.token:
            return True
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                scheme, _, given = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    given.strip(), self.token.encode()
                )
        return False

    async def _health(self) -> tuple[bool, dict[str, Any]]:
        try:
            result = self.health()
            if inspect.isawaitable(result):
                async with asyncio.timeout(self.health_timeout_s):
                    result = await result
            return result  # type: ignore[return-value]
        except TimeoutError:
            return False, {"reasons": [f"health check took over {self.health_timeout_s} s"]}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            parts = request.split(b"\r\n", 1)[0].split()
            method, path = (parts[0], parts[1].split(b"?", 1)[0]) if len(parts) >= 2 else (b"", b"")
            extra = ""
            if method not in (b"GET", b"HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif not self._authorized(request):
                status, ctype, body = "401 Unauthorized", "text/plain", b"bearer token required\n"
                extra = 'WWW-Authenticate: Bearer realm="emomon"\r\n'
            elif path == b"/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.render()
            elif path in (b"/healthz", b"/health"):
                ok, detail = await self._health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = (
                    "application/json",
                    json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode(),
                )
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
            writer.write(head.encode() + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ) as e:
            log.debug("metrics request dropped: %s", e)
        finally:
            writer.close()


def metrics_server(settings: Any, metrics: Metrics, health: HealthCheck) -> MetricsServer | None:
    """The endpoint ``settings.metrics`` asks for (host, port, token), or None without a port.

    ``settings``: the whole :class:`~emomon.services.settings.Settings` (typed ``Any`` so this
    module stays free of the settings import).
    """
    m = settings.metrics
    if m.port is None:
        return None
    token = m.token.get_secret_value() if m.token is not None else None
    return MetricsServer(metrics, health, host=m.host, port=m.port, token=token)


__all__ = ["HealthCheck", "Metrics", "MetricsServer", "metrics_server"]
