"""MQTT sink: per-speaker emotion events for dashboards and home automation (issue #5).

Topics (``{prefix}`` = ``mqtt.topic_prefix``, default ``emomon``; see docs/MQTT.md):

- ``{prefix}/{session}/{speaker}/emotion`` - every event, not retained;
- ``{prefix}/{session}/{speaker}/state``   - the speaker's latest event, retained;
- ``{prefix}/{session}/events``            - every event of every speaker of the session;
- ``{prefix}/status``                      - retained ``online`` / ``offline`` (last will).

Delivery: :meth:`MqttSink.publish` only appends to a bounded in-memory *outbox*; one background
task owns the aiomqtt client and drains the outbox. An event leaves the outbox only after every
one of its messages was acknowledged (QoS 1: PUBACK), so a broker restart or a dropped connection
loses nothing: whatever was in flight is put back and sent again after the reconnect (consumers
may see duplicates; ``event_id`` identifies them). Only overflow of the bound drops events - the
oldest first - and that is counted and logged. Reconnects follow one :class:`ReconnectPolicy`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import operator
import random
import re
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from emomon.services.events import EmotionEvent
from emomon.services.publish import homeassistant
from emomon.services.publish.base import SinkError
from emomon.services.settings import MqttSettings

log = logging.getLogger(__name__)

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"

# ---------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------

# '+' and '#' are wildcards, '/' separates levels, NUL is forbidden by the MQTT spec, other
# control characters are discouraged by it (and break shells and dashboards).
_UNSAFE_IN_SEGMENT = re.compile(r"[+#/\x00-\x1f\x7f]")
MAX_SEGMENT_BYTES = 128  # a speaker name is not a place for a novel; MQTT allows 64 KiB topics


def sanitize_segment(value: str) -> str:
    """Make ``value`` (a speaker name or session id) safe as exactly one MQTT topic level.

    Why: speaker names come from users (RTP SSRC names, clustering labels) and session ids from
    file names; a ``/`` would add a topic level, ``+``/``#`` are wildcards a publisher may not
    use, and an empty level makes ``a//b`` topics that most dashboards mishandle. Unsafe
    characters become ``_``; an empty value becomes ``_``; the result is cut to
    :data:`MAX_SEGMENT_BYTES` of UTF-8. Distinct names may collide after this (``a/b`` and
    ``a+b``); the payload always carries the original name.
    """
    safe = _UNSAFE_IN_SEGMENT.sub("_", value)
    # Lone surrogates (from undecodable file names) cannot be encoded as UTF-8, which MQTT requires.
    raw = safe.encode("utf-8", "replace")[:MAX_SEGMENT_BYTES]
    safe = raw.decode("utf-8", "ignore")  # "ignore" drops a multi-byte char cut in half
    return safe or "_"


def validate_prefix(prefix: str) -> str:
    """Check a topic prefix (may span levels, ``home/emomon``); raise SinkError if unusable."""
    levels = prefix.split("/")
    if not prefix or any(not level for level in levels):
        raise SinkError(f"mqtt.topic_prefix {prefix!r} must be non-empty and have no empty levels")
    if any(_UNSAFE_IN_SEGMENT.search(level) for level in levels):
        raise SinkError(
            f"mqtt.topic_prefix {prefix!r} may not contain '+', '#' or control characters"
        )
    if prefix.startswith("$"):
        raise SinkError(
            f"mqtt.topic_prefix {prefix!r} may not start with '$' (reserved for brokers)"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the sink uses, in one place, so docs, tests and code cannot drift apart."""

    prefix: str = "emomon"
    ha_prefix: str = "homeassistant"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def emotion(self, session: str, speaker: str) -> str:
        return f"{self.prefix}/{sanitize_segment(session)}/{sanitize_segment(speaker)}/emotion"

    def state(self, session: str, speaker: str) -> str:
        return f"{self.prefix}/{sanitize_segment(session)}/{sanitize_segment(speaker)}/state"

    def events(self, session: str) -> str:
        return f"{self.prefix}/{sanitize_segment(session)}/events"

    def ha_config(self, session: str, speaker: str) -> str:
        return f"{self.ha_prefix}/sensor/{homeassistant.object_id(session, speaker)}/config"

    @property
    def ha_status(self) -> str:
        return f"{self.ha_prefix}/status"


# ---------------------------------------------------------------------------------------------
# Broker address
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed ``mqtt[s]://user:pass@host:port`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def display(self) -> str:
        """The URL without the password, for logs and error messages."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://`` (default port 1883) or ``mqtts://`` (8883); user and password may be
    percent-encoded. Raise SinkError with the offending part named."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise SinkError(f"invalid MQTT URL {url!r}: {e}") from e
    if parts.scheme not in ("mqtt", "mqtts"):
        raise SinkError(f"invalid MQTT URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise SinkError(f"invalid MQTT URL {url!r}: no host (expected mqtt://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SinkError(
            f"invalid MQTT URL {url!r}: a path or query is not supported; use mqtt.topic_prefix"
        )
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """A verifying client context: system CAs unless ``ca_file``; a client cert if configured."""
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_file)
        if settings.cert_file:
            ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as e:
        raise SinkError(
            f"cannot load the MQTT TLS files (ca_file={settings.ca_file}, cert_file={settings.cert_file}, "
            f"key_file={settings.key_file}): {e}"
        ) from e
    return ctx


# ---------------------------------------------------------------------------------------------
# Reconnect policy
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential backoff with jitter between connection attempts.

    Why a policy object: the only place that decides *when* to retry, so the sink's connection
    loop stays one readable ``while`` and tests can shorten the waits (cf. redis-py's ``Retry``).
    Jitter spreads the reconnects of many emomon processes after a broker restart.
    """

    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        if self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise ValueError("need 0 <= initial_delay_s <= max_delay_s")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter < 1")

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt number ``attempt`` (1 = the first retry)."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** max(0, attempt - 1))
        return base * (1 - self.jitter + 2 * self.jitter * rand())


# ---------------------------------------------------------------------------------------------
# Outbox
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An accepted event with its payload, serialised once when accepted."""

    event: EmotionEvent
    payload: str


class Outbox:
    """Bounded FIFO of events not yet acknowledged by the broker.

    Invariant (checked by the unit tests): ``queued == sent + dropped + abandoned + pending``,
    where *pending* counts both waiting and in-flight events. The bound applies to the waiting
    deque; at most one batch (``take``'s ``limit``) is in flight on top of it. Overflow drops the
    oldest waiting event, because for a live monitor the newest emotion matters most.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("outbox size must be >= 1")
        self.maxsize = maxsize
        self._waiting: collections.deque[PendingEvent] = collections.deque()
        self._in_flight = 0
        self.queued = 0
        self.sent = 0
        self.dropped = 0
        self.resent = 0  # events put back after a connection loss (sent again later)
        self.abandoned = 0  # events still pending when the sink was closed
        self.nonempty = asyncio.Event()
        self.idle = asyncio.Event()  # nothing waiting and nothing in flight
        self.idle.set()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def pending(self) -> int:
        return len(self._waiting) + self._in_flight

    def put(self, item: PendingEvent) -> int:
        """Append ``item``; return how many old events were dropped to make room (0 or 1)."""
        self.queued += 1
        self._waiting.append(item)
        self.nonempty.set()
        self.idle.clear()
        return self._trim()

    def take(self, limit: int) -> list[PendingEvent]:
        """Move up to ``limit`` of the oldest events in flight; :meth:`settle` must follow."""
        batch = [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]
        self._in_flight += len(batch)
        if not self._waiting:
            self.nonempty.clear()
        return batch

    def settle(self, batch: Sequence[PendingEvent], delivered: Sequence[bool]) -> int:
        """Count the delivered part of ``batch``; put the rest back at the front, in order.

        Returns how many events were dropped because putting them back overflowed the bound.
        """
        self._in_flight -= len(batch)
        back = [item for item, ok in zip(batch, delivered, strict=True) if not ok]
        self.sent += len(batch) - len(back)
        self.resent += len(back)
        self._waiting.extendleft(reversed(back))
        dropped = self._trim()
        if self._waiting:
            self.nonempty.set()
        elif self._in_flight == 0:
            self.idle.set()
        return dropped

    def abandon(self) -> int:
        """Forget every waiting event (at close, when the broker could not take them)."""
        n = len(self._waiting)
        self._waiting.clear()
        self.abandoned += n
        self.nonempty.clear()
        if self._in_flight == 0:
            self.idle.set()
        return n

    def _trim(self) -> int:
        n = 0
        while len(self._waiting) > self.maxsize:
            self._waiting.popleft()
            n += 1
        self.dropped += n
        return n


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


class _PahoLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho's logger for one client: remembers the last socket error, logs it at DEBUG.

    Why: paho tells *why* a socket failed (a TLS alert, a reset) only in its log; the sink's own
    one-line warning or SinkError quotes it instead of printing a second, lower-level line.
    """

    def __init__(self) -> None:
        super().__init__(log.getChild("paho"), {})
        self.last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and not kwargs.get("exc_info"):
            self.last_error = str(msg) % args if args else str(msg)
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


class _Client(aiomqtt.Client):
    """aiomqtt's client, failing a connect at once when the socket closes before CONNACK.

    aiomqtt 2.5 ignores a disconnect that comes before CONNACK and waits for its timeout, then
    reports only "Operation timed out" - e.g. for a broker that demands a client certificate.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._paho_log = _PahoLog()
        super().__init__(*args, logger=self._paho_log, **kwargs)  # type: ignore[arg-type]
        # aiomqtt warns above 10 unacknowledged calls; the sink keeps a whole window in flight
        # on purpose (its own bound), so only warn beyond that.
        self.pending_calls_threshold = 4 * int(kwargs.get("max_inflight_messages") or 10)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        if not self._connected.done():
            why = self._paho_log.last_error or str(reason_code)
            self._connected.set_exception(
                aiomqtt.MqttError(f"connection closed before the broker accepted it: {why}")
            )
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    @property
    def last_socket_error(self) -> str | None:
        return self._paho_log.last_error


# ---------------------------------------------------------------------------------------------
# The sink
# ---------------------------------------------------------------------------------------------


class MqttSink:
    """Publishes every event to MQTT with at-least-once delivery (see the module docstring).

    Args:
        settings: broker URL, TLS files, QoS, prefix, outbox bound, discovery switches.
        sessions: session ids this run will publish; checked at start so that two sessions
            whose ids sanitise to the same topic level are reported instead of mixed.
        reconnect: when to retry a lost or failed connection.
        flush_timeout_s: how long :meth:`close` waits for the outbox to drain.
        window: events in flight at once; paho's in-flight limit is set to match, so a backlog
            after a reconnect drains at window/RTT instead of one event per round trip.
    """

    name = "mqtt"

    def __init__(
        self,
        settings: MqttSettings,
        *,
        sessions: Sequence[str] = (),
        reconnect: ReconnectPolicy | None = None,
        flush_timeout_s: float = 5.0,
        window: int = 32,
        publish_timeout_s: float = 30.0,
    ) -> None:
        if not settings.url:
            raise SinkError("MQTT sink needs a broker URL (--mqtt-url mqtt://host:port)")
        self.settings = settings
        self.address = parse_mqtt_url(settings.url)
        self.topics = Topics(
            validate_prefix(settings.topic_prefix), validate_prefix(settings.ha_prefix)
        )
        self.sessions = tuple(sessions)
        self.reconnect = reconnect or ReconnectPolicy()
        self.flush_timeout_s = flush_timeout_s
        self.window = max(1, window)
        self.publish_timeout_s = publish_timeout_s
        self._tls = _tls_context(settings) if self.address.tls else None
        self._outbox = Outbox(settings.outbox_size)
        # (session, speaker) as topic levels -> as given; the speakers HA discovery knows about
        self._speakers: dict[tuple[str, str], tuple[str, str]] = {}
        self._announced: set[tuple[str, str]] = set()  # discovery sent on the current connection
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._connected_once = False
        self._connects = 0
        self._connection_errors = 0
        self._last_drop_log = float("-inf")

    # -- Sink protocol ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and publish retained ``online``; or, with ``wait_for_broker``, keep trying.

        Raises:
            SinkError: (without ``wait_for_broker``) the broker is unreachable or refused us.
        """
        if self._runner is not None:
            return
        self._check_sessions()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(first), name="mqtt-sink")
        if self.settings.wait_for_broker:
            log.info("MQTT: connecting to %s in the background", self.address.display)
            return
        try:
            await first
        except SinkError:
            await self._runner
            self._runner = None
            raise
        except asyncio.CancelledError:  # e.g. Ctrl-C while connecting: leave no task behind
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
            raise

    async def publish(self, event: EmotionEvent) -> None:
        """Queue ``event``; never waits for the network. Overflow drops (and counts) the oldest.

        Raises:
            SinkError: the sink was not started, or its connection task died of a bug, so queued
                events would never leave; better loud than a silently growing outbox.
        """
        if self._runner is None:
            raise SinkError("MQTT sink: publish() before start() or after close()")
        if self._runner.done() and not self._runner.cancelled() and self._runner.exception():
            raise SinkError(f"MQTT sink stopped: {self._runner.exception()!r}")
        dropped = self._outbox.put(PendingEvent(event, event.to_json()))
        if dropped:
            self._log_drops()
        self._wake.set()

    async def close(self) -> None:
        """Flush the outbox (up to ``flush_timeout_s``), publish retained ``offline``, disconnect."""
        if self._runner is None:
            return
        if not self._runner.done():
            try:
                await asyncio.wait_for(self._outbox.idle.wait(), self.flush_timeout_s)
            except TimeoutError:
                log.warning(
                    "MQTT: %d events not delivered to %s within %.1f s of closing",
                    self._outbox.pending,
                    self.address.display,
                    self.flush_timeout_s,
                )
        self._stop.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._runner), timeout=5.0)
        except TimeoutError:
            log.warning("MQTT: the connection did not close within 5 s; dropping it")
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        abandoned = self._outbox.abandon()
        if abandoned:
            log.warning("MQTT: %d undelivered events abandoned at exit", abandoned)
        if self._outbox.dropped:
            log.warning(
                "MQTT: %d events dropped in total because the outbox (%d) was full",
                self._outbox.dropped,
                self._outbox.maxsize,
            )
        self._runner = None

    @property
    def counters(self) -> dict[str, int]:
        """Event counts (``queued == sent + dropped + abandoned + pending``) and connection counts."""
        o = self._outbox
        return {
            "queued": o.queued,
            "sent": o.sent,
            "dropped": o.dropped,
            "abandoned": o.abandoned,
            "pending": o.pending,
            "resent": o.resent,
            "connects": self._connects,
            "reconnects": max(0, self._connects - 1),
            "connection_errors": self._connection_errors,
        }

    # -- connection loop ----------------------------------------------------------------------

    async def _run(self, first: asyncio.Future[None]) -> None:
        """Own the client: connect, serve the connection, and on loss retry per the policy."""
        attempt = 0
        try:
            while not self._stop.is_set():
                client = self._client()
                connected = False
                try:
                    async with client:
                        await self._on_connect(client)
                        connected, attempt = True, 0
                        if not first.done():
                            first.set_result(None)
                        await self._serve(client)
                        return  # _serve returns only when close() asked to stop
                except aiomqtt.MqttError as e:
                    attempt += 1
                    self._connection_errors += 1
                    message = self._describe_failure(e, connected, client.last_socket_error)
                    if not self._connected_once and not self.settings.wait_for_broker:
                        first.set_exception(SinkError(message))
                        return
                delay = self.reconnect.delay_s(attempt)
                log.warning(
                    "MQTT: %s; %d events pending; retrying in %.1f s",
                    message,
                    self._outbox.pending,
                    delay,
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    continue
        finally:
            if not first.done():  # stopped (or crashed) before the first connection
                first.set_exception(
                    SinkError(f"MQTT sink stopped before connecting to {self.address.display}")
                )
                first.exception()  # retrieved here: nobody may be awaiting it (wait_for_broker)

    def _client(self) -> _Client:
        # A fresh client per connection: clean session, so nothing survives in paho's own queue;
        # the outbox is the single place that remembers what still has to go out.
        return _Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.settings.client_id,
            will=aiomqtt.Will(self.topics.status, STATUS_OFFLINE, qos=1, retain=True),
            clean_session=True,
            tls_context=self._tls,
            timeout=10.0,
            keepalive=30,
            max_inflight_messages=self.window,
        )

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topics.status, STATUS_ONLINE, qos=1, retain=True)
        self._connects += 1
        if self._connected_once:
            log.warning(
                "MQTT: reconnected to %s; re-sending %d events",
                self.address.display,
                self._outbox.pending,
            )
        else:
            log.info(
                "MQTT: connected to %s, publishing under %s/",
                self.address.display,
                self.topics.prefix,
            )
        self._connected_once = True
        self._announced.clear()
        if self.settings.ha_discovery:
            await client.subscribe(self.topics.ha_status, qos=1)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Drain the outbox until close(); raise MqttError when the connection is lost.

        Three tasks: the drainer (the only writer), the watcher (notices a lost connection at
        once, via aiomqtt's message iterator, and reads HA's birth messages) and the stop waiter.
        Whichever finishes first ends the others; the drainer puts in-flight events back.
        """
        tasks = {
            asyncio.create_task(self._drain(client), name="mqtt-drain"),
            asyncio.create_task(self._watch(client), name="mqtt-watch"),
            stopper := asyncio.create_task(self._stop.wait(), name="mqtt-stop"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if (
                task is not stopper
                and not task.cancelled()
                and (exc := task.exception()) is not None
            ):
                raise exc
        try:
            await client.publish(
                self.topics.status, STATUS_OFFLINE, qos=1, retain=True, timeout=2.0
            )
        except aiomqtt.MqttError as e:
            log.warning("MQTT: could not publish 'offline' on %s: %s", self.topics.status, e)

    async def _watch(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if (
                message.topic.matches(self.topics.ha_status)
                and message.payload == STATUS_ONLINE.encode()
            ):
                log.info(
                    "MQTT: Home Assistant is online; announcing %d sensors again",
                    len(self._speakers),
                )
                self._announced.clear()
                self._wake.set()

    async def _drain(self, client: aiomqtt.Client) -> None:
        """The only task that publishes on ``client``: discovery configs first, then events."""
        while True:
            self._wake.clear()  # before looking at the work, so a wake-up that follows is never missed
            if self.settings.ha_discovery:
                await self._announce(
                    client, [k for k in self._speakers if k not in self._announced]
                )
            batch = self._outbox.take(self.window)
            if batch:
                await self._send_batch(client, batch)
            else:
                await self._wake.wait()

    async def _send_batch(self, client: aiomqtt.Client, batch: list[PendingEvent]) -> None:
        """Send each event's messages; settle the batch even when cancelled or disconnected."""
        delivered = [False] * len(batch)
        results: list[BaseException | None] = []

        async def send(i: int, item: PendingEvent) -> None:
            for topic, retain in self._routes(item.event):
                await client.publish(
                    topic,
                    item.payload,
                    qos=self.settings.qos,
                    retain=retain,
                    timeout=self.publish_timeout_s,
                )
            delivered[i] = True

        try:
            if self.settings.ha_discovery:
                await self._announce(client, [self._remember(p.event) for p in batch])
            else:
                for p in batch:
                    self._remember(p.event)
            results = await asyncio.gather(
                *(send(i, p) for i, p in enumerate(batch)), return_exceptions=True
            )
        finally:
            # Only the delivered *prefix* counts: re-sending a later, delivered event after an
            # earlier one that was not keeps the retained state at the newest event.
            prefix = list(itertools.accumulate(delivered, operator.and_))
            dropped = self._outbox.settle(batch, prefix)
            if dropped:
                self._log_drops()
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _routes(self, event: EmotionEvent) -> Iterator[tuple[str, bool]]:
        """(topic, retain) of every message one event becomes; the state topic last, so a retained
        state never runs ahead of the stream a subscriber sees."""
        yield self.topics.emotion(event.session, event.speaker), False
        yield self.topics.events(event.session), False
        yield self.topics.state(event.session, event.speaker), True

    def _remember(self, event: EmotionEvent) -> tuple[str, str]:
        key = (sanitize_segment(event.session), sanitize_segment(event.speaker))
        self._speakers.setdefault(key, (event.session, event.speaker))
        return key

    async def _announce(self, client: aiomqtt.Client, keys: Sequence[tuple[str, str]]) -> None:
        """Publish (retained) the HA discovery config of each speaker not yet announced."""
        for key in dict.fromkeys(keys):
            if key in self._announced:
                continue
            session, speaker = self._speakers[key]
            config = homeassistant.sensor_config(
                session=session,
                speaker=speaker,
                state_topic=self.topics.state(session, speaker),
                status_topic=self.topics.status,
                qos=self.settings.qos,
            )
            await client.publish(
                self.topics.ha_config(session, speaker),
                json.dumps(config),
                qos=1,
                retain=True,
                timeout=self.publish_timeout_s,
            )
            self._announced.add(key)

    # -- helpers ------------------------------------------------------------------------------

    def _check_sessions(self) -> None:
        seen: dict[str, str] = {}
        for session in self.sessions:
            seg = sanitize_segment(session)
            if seg in seen and seen[seg] != session:
                raise SinkError(
                    f"sessions {seen[seg]!r} and {session!r} map to the same MQTT topic level {seg!r}; "
                    "rename one (--set source.session=...)"
                )
            seen[seg] = session
            log.info("MQTT: session %r publishes to %s/%s/#", session, self.topics.prefix, seg)

    def _describe_failure(
        self, e: aiomqtt.MqttError, connected: bool, socket_error: str | None
    ) -> str:
        """One line saying what failed and, where we can tell, what to do about it."""
        where = self.address.display
        if isinstance(e, aiomqtt.MqttCodeError) and e.rc is not None and self._is_auth_rc(e.rc):
            return f"MQTT broker {where} refused the connection: {e} (check user and password in --mqtt-url)"
        if isinstance(e, MqttConnectError):
            return f"MQTT broker {where} refused the connection: {e}"
        if connected:
            return f"MQTT connection to {where} lost: {socket_error or e}"
        if "SSL" in str(e):
            hint = "check mqtt.ca_file, mqtt.cert_file and mqtt.key_file"
        elif self.settings.wait_for_broker or self._connected_once:
            hint = "is it running and reachable?"
        else:
            hint = "is it running and reachable? --set mqtt.wait_for_broker=true waits for it instead of failing"
        return f"cannot connect to the MQTT broker at {where}: {e} ({hint})"

    @staticmethod
    def _is_auth_rc(rc: Any) -> bool:
        # MQTT 3.1.1 CONNACK 4/5; MQTT 5 reason codes 134/135 (paho gives ReasonCode objects).
        value = getattr(rc, "value", rc)
        return value in (4, 5, 134, 135)

    def _log_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:
            log.warning(
                "MQTT: outbox full (%d events; broker %s unreachable?), dropping the oldest: %d dropped so far",
                self._outbox.maxsize,
                self.address.display,
                self._outbox.dropped,
            )
            self._last_drop_log = now
