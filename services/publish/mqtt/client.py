"""Reaching the broker: its address, TLS, when to retry, and the aiomqtt client the sink uses.

:class:`SinkClient` overrides two private members of ``aiomqtt.Client`` (``_on_disconnect``
and the ``_connected`` future), because aiomqtt's public API has no hook for a socket that
closes before CONNACK. pyproject.toml therefore pins aiomqtt to the releases checked to have
them, and tests/unit/test_mqtt_client.py fails by name if an upgrade removes or changes them.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from emomon.services.publish.base import SinkError
from emomon.services.redact import redact_url
from emomon.services.retry import ExponentialBackoff
from emomon.services.settings import MqttSettings

log = logging.getLogger(__name__)

# The logger paho writes to (one child per package, as before the split into modules).
_PAHO_LOGGER = f"{__package__}.paho"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed ``mqtt[s]://user:pass@host:port`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # reaches the client, never a log

    @property
    def display(self) -> str:
        """The URL without the password, for logs and error messages."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://`` (default port 1883) or ``mqtts://`` (8883); user and password may be
    percent-encoded. Raise SinkError with the offending part named."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise SinkError(f"invalid MQTT URL {shown!r}: {e}") from e
    if parts.scheme not in ("mqtt", "mqtts"):
        raise SinkError(f"invalid MQTT URL {shown!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise SinkError(f"invalid MQTT URL {shown!r}: no host (expected mqtt://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SinkError(
            f"invalid MQTT URL {shown!r}: a path or query is not supported; use mqtt.topic_prefix"
        )
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
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


# When the sink retries a lost or refused connection: the shared back-off (issue #19) with its
# MQTT defaults, 0.5 s doubling to 30 s, each delay scaled by a random factor in [0.8, 1.2].
ReconnectPolicy = ExponentialBackoff


class _PahoLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho's logger for one client: remembers the last socket error, logs it at DEBUG.

    Why: paho tells *why* a socket failed (a TLS alert, a reset) only in its log; the sink's own
    one-line warning or SinkError quotes it instead of printing a second, lower-level line.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger(_PAHO_LOGGER), {})
        self.last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and not kwargs.get("exc_info"):
            self.last_error = str(msg) % args if args else str(msg)
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


class SinkClient(aiomqtt.Client):
    """aiomqtt's client, failing a connect at once when the socket closes before CONNACK.

    aiomqtt 2.5 ignores a disconnect that comes before CONNACK and waits for its timeout, then
    reports only "Operation timed out" - e.g. for a broker that demands a client certificate.
    The override reaches into aiomqtt's internals (see the module docstring for the pin).
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

    @classmethod
    def fresh(
        cls,
        address: BrokerAddress,
        *,
        client_id: str | None,
        tls: ssl.SSLContext | None,
        will: aiomqtt.Will | None = None,
        window: int | None = None,
        keepalive: int = 30,
    ) -> SinkClient:
        """A client for one connection, with ``window`` messages allowed in flight at once
        (None: paho's default)."""
        # A fresh client per connection: clean session, so nothing survives in paho's own queue;
        # the sink's outbox is the single place that remembers what still has to go out.
        return cls(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=client_id,
            will=will,
            clean_session=True,
            tls_context=tls,
            timeout=10.0,
            keepalive=keepalive,
            max_inflight_messages=window,
        )

    @property
    def last_socket_error(self) -> str | None:
        return self._paho_log.last_error


def is_auth_rc(rc: Any) -> bool:
    """Whether a CONNACK code means bad credentials: MQTT 3.1.1 codes 4/5, MQTT 5 134/135."""
    value = getattr(rc, "value", rc)  # paho gives ReasonCode objects
    return value in (4, 5, 134, 135)


def describe_failure(
    e: aiomqtt.MqttError,
    where: str,
    *,
    connected: bool,
    socket_error: str | None,
    will_retry: bool,
) -> str:
    """One line saying what failed and, where we can tell, what to do about it.

    Args:
        e: what aiomqtt raised.
        where: the broker's URL without the password.
        connected: the connection had been up (so it was lost, not refused).
        socket_error: paho's last socket error, when it logged one.
        will_retry: the sink keeps retrying (so no hint to make it wait for the broker).
    """
    if isinstance(e, aiomqtt.MqttCodeError) and e.rc is not None and is_auth_rc(e.rc):
        return f"MQTT broker {where} refused the connection: {e} (check user and password in --mqtt-url)"
    if isinstance(e, MqttConnectError):
        return f"MQTT broker {where} refused the connection: {e}"
    if connected:
        return f"MQTT connection to {where} lost: {socket_error or e}"
    if "SSL" in str(e):
        hint = "check mqtt.ca_file, mqtt.cert_file and mqtt.key_file"
    elif will_retry:
        hint = "is it running and reachable?"
    else:
        hint = "is it running and reachable? --set mqtt.wait_for_broker=true waits for it instead of failing"
    return f"cannot connect to the MQTT broker at {where}: {e} ({hint})"
