"""The sink's aiomqtt client relies on private aiomqtt members; these tests name them if they go.

Why: ``SinkClient`` overrides ``aiomqtt.Client._on_disconnect`` and fails the ``_connected``
future so that a socket closed before CONNACK fails the connect at once (aiomqtt itself waits
for its timeout). Private members may change in any release; pyproject.toml pins aiomqtt to
the tested range, and an upgrade that breaks the assumption fails here, by name, instead of
turning every refused TLS handshake into a 10 s "Operation timed out".
"""

from __future__ import annotations

import asyncio
import inspect

import aiomqtt
import pytest

from emomon.services.publish.mqtt.client import SinkClient, describe_failure

_WHAT_TO_DO = (
    "aiomqtt {version} changed a private member that SinkClient "
    "(services/publish/mqtt/client.py) overrides: {what}. Adapt SinkClient to the new "
    "aiomqtt, then widen the aiomqtt pin in pyproject.toml."
)


def _fail(what: str) -> str:
    return _WHAT_TO_DO.format(version=aiomqtt.__version__, what=what)


def test_aiomqtt_still_has_on_disconnect_with_the_paho_v2_signature() -> None:
    hook = getattr(aiomqtt.Client, "_on_disconnect", None)
    assert callable(hook), _fail("aiomqtt.Client._on_disconnect is gone")
    params = list(inspect.signature(hook).parameters)
    assert params == ["self", "client", "userdata", "flags", "reason_code", "properties"], _fail(
        f"aiomqtt.Client._on_disconnect now takes {params}"
    )


def test_aiomqtt_still_routes_paho_disconnects_and_awaits_connected() -> None:
    async def main() -> None:
        client = SinkClient("127.0.0.1", 1883)
        connected = getattr(client, "_connected", None)
        assert isinstance(connected, asyncio.Future), _fail(
            f"aiomqtt.Client._connected is {type(connected).__name__}, not an asyncio.Future"
        )
        paho = getattr(client, "_client", None)
        assert paho is not None and paho.on_disconnect == client._on_disconnect, _fail(
            "paho's on_disconnect callback is no longer aiomqtt.Client._on_disconnect"
        )
        source = inspect.getsource(aiomqtt.Client.__aenter__)
        assert "self._connected" in source, _fail(
            "aiomqtt.Client.__aenter__ no longer waits on self._connected"
        )

    asyncio.run(main())


def test_a_disconnect_before_connack_fails_the_connect_with_the_socket_error() -> None:
    async def main() -> None:
        client = SinkClient("127.0.0.1", 1883)
        client._paho_log.log(40, "failed to receive on socket: %s", "tlsv13 alert")
        client._on_disconnect(None, None, None, "Unspecified error", None)
        with pytest.raises(aiomqtt.MqttError, match="before the broker accepted it: failed to"):
            client._connected.result()
        assert client.last_socket_error == "failed to receive on socket: tlsv13 alert"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("connected", "will_retry", "expected"),
    [
        (True, False, "MQTT connection to mqtt://h:1 lost: reset"),
        (False, True, "cannot connect to the MQTT broker at mqtt://h:1: boom (is it running"),
        (False, False, "--set mqtt.wait_for_broker=true"),
    ],
)
def test_describe_failure_says_what_to_do(connected: bool, will_retry: bool, expected: str) -> None:
    message = describe_failure(
        aiomqtt.MqttError("boom"),
        "mqtt://h:1",
        connected=connected,
        socket_error="reset",
        will_retry=will_retry,
    )
    assert expected in message
