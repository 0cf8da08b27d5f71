"""MQTT sink: per-speaker emotion events for dashboards and home automation (issue #5).

Delivery: :meth:`MqttSink.publish` only appends to a bounded in-memory *outbox*
(:mod:`.outbox`); one background task owns the aiomqtt client and drains the outbox. An event
leaves the outbox only after every one of its messages was acknowledged (QoS 1: PUBACK), so a
broker restart or a dropped connection loses nothing: whatever was in flight is put back and
sent again after the reconnect (consumers may see duplicates; ``event_id`` identifies them).
Only overflow of the bound drops events - the oldest first - and that is counted and logged.
Reconnects follow one :class:`~.client.ReconnectPolicy`, counted by the shared
:class:`~emomon.services.retry.RetryPolicy`. Topic names live in :mod:`.topics`.

Failures stay visible and recoverable (issue #18): a bug that kills the connection task
restarts it on the same back-off (:mod:`.supervision`: an event that crashes it twice in a row
is dropped and counted; 10 crashes in a row stop the sink), and :meth:`MqttSink.health` says so,
as it says when the broker refuses the credentials. Availability is per instance and the
retained states are put back after a broker loses them (:mod:`.upkeep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import operator
import time
from collections.abc import Sequence
from typing import Any

import aiomqtt

from emomon.services.events import EmotionEvent
from emomon.services.publish import homeassistant
from emomon.services.publish.base import SinkError
from emomon.services.publish.mqtt.client import (
    ReconnectPolicy,
    describe_failure,
    is_auth_rc,
    parse_mqtt_url,
    tls_context,
)
from emomon.services.publish.mqtt.outbox import Outbox, PendingEvent
from emomon.services.publish.mqtt.presence import default_instance_id
from emomon.services.publish.mqtt.supervision import CrashGuard
from emomon.services.publish.mqtt.topics import (
    STATUS_ONLINE,
    Topics,
    check_sessions,
    sanitize_segment,
    validate_prefix,
)
from emomon.services.publish.mqtt.upkeep import Upkeep
from emomon.services.retry import RetryPolicy, sleep_unless
from emomon.services.settings import MqttSettings

log = logging.getLogger(__name__)


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
        self._tls = tls_context(settings) if self.address.tls else None
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
        self.instance = sanitize_segment(settings.client_id or default_instance_id())
        self.upkeep = Upkeep(self.topics, self.instance)
        self.connected = False
        self._down_since: float | None = time.monotonic()
        self.auth_refused: str | None = None  # the broker refused our credentials (unhealthy)
        self.guard = CrashGuard(self._outbox)  # crashes of the connection task (supervision.py)

    # -- Sink protocol ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and publish retained ``online``; or, with ``wait_for_broker``, keep trying.

        Raises:
            SinkError: (without ``wait_for_broker``) the broker is unreachable or refused us.
        """
        if self._runner is not None:
            return
        check_sessions(self.topics, self.sessions)
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
            "crashes": self.guard.crashes,
            "poisoned": self.guard.poisoned,
            "states_republished": self.upkeep.states.republished,
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Unhealthy while stopped, restarting after a crash, or refused by the broker.

        A broker that is merely away is reported (``connected``, ``down_s``, ``pending``) but
        healthy: the outbox holds the events, and restarting this process would lose them.
        """
        reason: str | None = None
        if self._runner is None:
            reason = "not started"
        elif self._runner.done():
            exc = None if self._runner.cancelled() else self._runner.exception()
            reason = f"stopped: {exc}" if exc else "stopped"
        elif self.auth_refused:
            reason = self.auth_refused
        else:
            reason = self.guard.restarting
        down = self._down_since
        detail: dict[str, Any] = {
            "instance": self.instance,
            "connected": self.connected,
            "down_s": None if down is None else round(time.monotonic() - down, 1),
            "pending": self._outbox.pending,
            "dropped": self._outbox.dropped,
            "crashes": self.guard.crashes,
        }
        if reason:
            detail["reason"] = reason
        return reason is None, detail

    # -- connection loop ----------------------------------------------------------------------

    async def _run(self, first: asyncio.Future[None]) -> None:
        """Own the client: connect, serve the connection, and on loss retry per the policy."""
        # Counts the failures since the last connection; _on_connect logs the reconnect itself.
        retry = RetryPolicy(log, self.reconnect, recovery_message=None)
        try:
            while not self._stop.is_set():
                client, presence = self.upkeep.clients(self.address, self._tls, self.window)
                connected = False
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        await stack.enter_async_context(client)
                        await stack.enter_async_context(presence)
                        await self._on_connect(client, presence)
                        connected = True
                        retry.succeeded()
                        if not first.done():
                            first.set_result(None)
                        await self._serve(client, presence)
                        return  # _serve returns only when close() asked to stop
                except aiomqtt.MqttError as e:
                    self._connection_errors += 1
                    message = describe_failure(
                        e,
                        self.address.display,
                        connected=connected,
                        socket_error=client.last_socket_error or presence.last_socket_error,
                        will_retry=self.settings.wait_for_broker or self._connected_once,
                    )
                    if isinstance(e, aiomqtt.MqttCodeError) and is_auth_rc(e.rc):
                        self.auth_refused = message
                    if not self._connected_once and not self.settings.wait_for_broker:
                        first.set_exception(SinkError(message))
                        return
                except Exception as e:  # noqa: BLE001 - a bug must restart the task, not end it
                    message = self.guard.crashed(e)
                finally:
                    self._disconnected()
                delay = retry.next_delay_s()
                log.warning(
                    "MQTT: %s; %d events pending; retrying in %.1f s",
                    message,
                    self._outbox.pending,
                    delay,
                )
                await sleep_unless(self._stop, delay)
        finally:
            if not first.done():  # stopped (or crashed) before the first connection
                first.set_exception(
                    SinkError(f"MQTT sink stopped before connecting to {self.address.display}")
                )
                first.exception()  # retrieved here: nobody may be awaiting it (wait_for_broker)

    def _disconnected(self) -> None:
        if self.connected:
            self._down_since = time.monotonic()
        self.connected = False

    async def _on_connect(self, client: aiomqtt.Client, presence: aiomqtt.Client) -> None:
        await self.upkeep.on_connect(client, presence)
        self.connected, self._down_since, self.auth_refused = True, None, None
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

    async def _serve(self, client: aiomqtt.Client, presence: aiomqtt.Client) -> None:
        """Drain the outbox until close(); raise MqttError when the connection is lost.

        Three tasks: the drainer (the only writer), the watcher (notices a lost connection at
        once, via aiomqtt's message iterator, and reads HA's birth messages) and the stop waiter.
        Whichever finishes first ends the others; the drainer puts in-flight events back.
        """
        tasks = {
            asyncio.create_task(self._drain(client), name="mqtt-drain"),
            asyncio.create_task(self._watch(client), name="mqtt-watch"),
            asyncio.create_task(self._watch_presence(presence), name="mqtt-presence"),
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
        await self.upkeep.on_close(client, presence)

    async def _watch_presence(self, presence: aiomqtt.Client) -> None:
        """Ends (MqttError) when the presence connection is lost, so both reconnect."""
        async for _ in presence.messages:
            pass

    async def _watch(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self.upkeep.handle(message):
                if self.upkeep.availability_changed and self.settings.ha_discovery:
                    self.upkeep.availability_changed = False
                    self._announced.clear()  # configs list the instances' topics: re-announce
                self._wake.set()
            elif (
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
            await self.upkeep.maintain(client, self.publish_timeout_s)
            if self.settings.ha_discovery:
                await self._announce(
                    client, [k for k in self._speakers if k not in self._announced]
                )
            batch = self._outbox.take(self.window)
            if batch:
                await self._send_batch(client, batch)
                self.guard.working()
                continue
            self.guard.working()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.upkeep.next_due_s())

    async def _send_batch(self, client: aiomqtt.Client, batch: list[PendingEvent]) -> None:
        """Send each event's messages; settle the batch even when cancelled or disconnected."""
        delivered = [False] * len(batch)
        results: list[BaseException | None] = []

        async def send(i: int, item: PendingEvent) -> None:
            ev = item.event
            for topic, retain in self.topics.routes(ev.session, ev.speaker):
                await client.publish(
                    topic,
                    item.payload,
                    qos=self.settings.qos,
                    retain=retain,
                    timeout=self.publish_timeout_s,
                )
                if retain:  # the speaker's state: remembered to put back after a broker loss
                    self.upkeep.states.delivered(topic, ev.end_s, ev.event_id, item.payload)
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
                availability_topics=self.upkeep.presence.availability_topics(),
            )
            await client.publish(
                self.topics.ha_config(session, speaker),
                json.dumps(config, allow_nan=False),
                qos=1,
                retain=True,
                timeout=self.publish_timeout_s,
            )
            self._announced.add(key)

    # -- helpers ------------------------------------------------------------------------------

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
