"""An in-process MQTT broker (amqtt) for ``emomon run --embedded-broker``.

Why: the embedded mode must work right after ``pip install`` (ARCHITECTURE.md, deployment mode 1),
yet a dashboard or Home Assistant wants an MQTT broker to subscribe to. amqtt is pure Python and
runs on emomon's own event loop, so nothing else has to be installed or started. It listens on
loopback by default; it is not meant to replace Mosquitto in a real deployment (no persistence,
no authentication).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from emomon.services.publish.base import SinkError

log = logging.getLogger(__name__)

# amqtt logs every packet at INFO; emomon's own log should stay readable.
_NOISY_LOGGERS = ("amqtt", "transitions")


class _NoTraceback(logging.Filter):
    """Drops the traceback amqtt logs when its listener cannot bind; SinkError says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def _broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 64}},
        # Only anonymous auth: the broker is bound to loopback by default. The $SYS plugin and the
        # packet loggers of amqtt's default configuration are left out on purpose.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _bound_port(broker: Any, fallback: int) -> int:
    """The port the listener really bound (differs from ``fallback`` when that was 0).

    amqtt has no public accessor for its listening sockets, so this reads the asyncio server it
    keeps per listener; if that ever changes, port 0 stops being supported rather than lying.
    """
    server = getattr(broker, "_servers", {}).get("default")
    sockets = getattr(getattr(server, "instance", None), "sockets", None) or ()
    for sock in sockets:
        return int(sock.getsockname()[1])
    if fallback == 0:
        raise SinkError("embedded MQTT broker: cannot tell which port was bound; give a fixed port")
    return fallback


@asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 1883) -> AsyncIterator[str]:
    """Run an amqtt broker on this event loop for the duration of the ``async with`` block.

    Args:
        host: address to listen on; keep loopback unless other machines must subscribe.
        port: TCP port; 0 picks a free one (the yielded URL names the real port).

    Yields:
        The ``mqtt://host:port`` URL to give to :class:`~emomon.services.publish.mqtt.MqttSink`.

    Raises:
        SinkError: the port is taken or the broker cannot start (one-line message).
    """
    from amqtt.broker import Broker  # imported lazily: amqtt is heavy and only this mode needs it
    from amqtt.errors import BrokerError

    for name in _NOISY_LOGGERS:
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    broker = Broker(_broker_config(host, port))
    quiet = _NoTraceback()
    logging.getLogger("amqtt.broker").addFilter(quiet)
    try:
        await broker.start()
    except (BrokerError, OSError) as e:
        reason = e.__cause__ or e
        raise SinkError(
            f"cannot start the embedded MQTT broker on {host}:{port}: {reason} "
            "(is another broker using that port? choose another with --set mqtt.embedded_port=N)"
        ) from e
    finally:
        logging.getLogger("amqtt.broker").removeFilter(quiet)
    url = f"mqtt://{host}:{_bound_port(broker, port)}"
    log.info("embedded MQTT broker listening on %s", url)
    try:
        yield url
    finally:
        try:
            await asyncio.wait_for(broker.shutdown(), timeout=5.0)
        except TimeoutError:
            log.warning("embedded MQTT broker did not shut down within 5 s; abandoning it")
