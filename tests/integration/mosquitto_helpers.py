"""Real Mosquitto brokers for the MQTT integration tests, on free loopback ports.

A system mosquitto may already listen on 1883; every test starts its own process with its own
config file in ``tmp_path`` so tests never share retained messages or sessions.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from emomon.services.events import EmotionEvent

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):  # plain TCP, TLS too
            return True
    except OSError:
        return False


@dataclass
class Mosquitto:
    """One mosquitto process; ``kill()`` + ``start()`` restarts it on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    persistence: bool = False
    password_file: Path | None = None
    tls: TlsFiles | None = None  # TLS listener that requires a client certificate
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        # Started as root, mosquitto would switch to user "mosquitto" and could not read tmp_path.
        lines.append(f"user {getpass.getuser()}")
        if self.tls is not None:
            t = self.tls
            lines += [
                f"cafile {t.ca}",
                f"certfile {t.server_cert}",
                f"keyfile {t.server_key}",
                "require_certificate true",
            ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            # autosave_interval 0 would mean "save on every change" only with autosave_on_changes;
            # SIGTERM/SIGINT make mosquitto write the database, SIGKILL does not.
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 5.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "mosquitto.log", "ab"),  # noqa: SIM115 - owned by the process
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.workdir / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {log[-500:]}")
            if _listening(self.port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout_s} s")

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its sockets open but answers nothing (packets stay in flight)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop with ``sig`` (SIGKILL: a crash; SIGTERM: clean, saves persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(d: Path) -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (EC keys: fast)."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ossl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=emomon test CA",
    )
    for name, extra in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        ossl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=emomon test {name}",
        )
        (d / f"{name}.ext").write_text(extra + "\n")
        ossl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    for key in d.glob("*.key"):
        os.chmod(key, 0o600)
    return TlsFiles(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
    )


def make_password_file(path: Path, user: str, password: str) -> Path:
    path.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True
    )
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop(signal.SIGKILL)


def make_event(session: str, speaker: str, i: int, label: str = "joy") -> EmotionEvent:
    """A real, schema-valid event (utterance ids unique per session/speaker/index)."""
    probs = {
        "neutral": 0.1,
        "joy": 0.1,
        "surprise": 0.1,
        "anger": 0.1,
        "sadness": 0.1,
        "disgust": 0.1,
        "fear": 0.1,
    }
    probs[label] = 0.4
    return EmotionEvent(
        session=session,
        speaker=speaker,
        utterance_id=f"{session}:{speaker}:{i}",
        channel="0",
        start_s=float(i),
        end_s=float(i) + 0.8,
        label=label,
        confidence=0.4,
        probabilities=probs,
        modalities=("text", "audio"),
        model_id="test-model",
        latency_ms=12.5,
        stage_ms={"asr": 8.0, "fusion": 4.5},
        text=f"utterance {i}",
        language="en",
    )


class Collector:
    """A subscriber that records every message (topic, payload, retain) in the background."""

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        client_id: str | None = None,
        clean: bool = True,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.port = port
        self.auth = auth  # (user, password) for a broker with a password file
        self.topic = topic
        self.client_id = client_id
        self.clean = clean
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        # Reconnects on its own (same client id, persistent session) so a broker restart test can
        # keep one collector: messages queued for it while it was away arrive after the reconnect.
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self.client_id,
                    clean_session=self.clean,
                    username=self.auth[0] if self.auth else None,
                    password=self.auth[1] if self.auth else None,
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self._ready.set()
                    async for m in client.messages:
                        assert isinstance(m.payload, bytes)
                        self.messages.append((str(m.topic), m.payload, m.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    def on(self, suffix: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t.endswith(suffix)]

    async def wait_for(self, predicate: object, timeout_s: float = 15.0) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out; got {len(self.messages)} messages: {self.messages[-5:]}"
                )
            await asyncio.sleep(0.02)
