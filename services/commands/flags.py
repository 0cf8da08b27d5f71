"""Command-line flags that set a settings field, in named groups shared by the commands.

Each :class:`Flag` names the settings field it overrides; its ``--help`` shows that field's
default, read from :class:`~emomon.services.settings.Settings`, so help and behaviour cannot
drift apart. :func:`add_flags` adds a group to a parser and :func:`overrides` turns the parsed
values into the nested dict :func:`~emomon.services.commands.common.settings_from_args` takes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from emomon.services.commands.common import put
from emomon.services.settings import Settings


class _Container(Protocol):
    """An argument parser or one of its groups."""

    def add_argument(self, *names: str, **kwargs: Any) -> Any: ...


def setting_default(dotted: str) -> Any:
    """The default of the settings field ``dotted`` (``'worker.max_wait_ms'``)."""
    model: type[BaseModel] = Settings
    *sections, name = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    return model.model_fields[name].get_default(call_default_factory=True)


@dataclass(frozen=True)
class Flag:
    """One flag and the settings field it sets.

    ``kind``: ``value`` passes the given value; ``on`` / ``off`` are switches that set the
    field to true / false when present. A value flag's help gets the field's default appended
    unless that default is ``None`` (the help then says what absence means).
    """

    names: tuple[str, ...]
    setting: str
    help: str
    kind: Literal["value", "on", "off"] = "value"
    metavar: str | None = None
    type: type | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-").replace("-", "_")

    def add_to(self, group: _Container) -> None:
        if self.kind != "value":
            group.add_argument(
                *self.names, dest=self.dest, action="store_true", default=None, help=self.help
            )
            return
        default = setting_default(self.setting)
        help_ = self.help if default is None else f"{self.help} (default {default})"
        kwargs: dict[str, Any] = {"dest": self.dest, "metavar": self.metavar, "help": help_}
        if self.type is not None:
            kwargs["type"] = self.type
        if self.choices is not None:
            kwargs["choices"] = self.choices
            kwargs.pop("metavar")
        group.add_argument(*self.names, **kwargs)

    def value(self, args: argparse.Namespace) -> Any:
        given = getattr(args, self.dest, None)
        if self.kind == "value" or not given:
            return given
        return self.kind == "on"


@dataclass(frozen=True)
class FlagGroup:
    title: str
    flags: tuple[Flag, ...]


def add_flags(p: argparse.ArgumentParser, *groups: FlagGroup) -> None:
    for g in groups:
        container = p.add_argument_group(g.title)
        for flag in g.flags:
            flag.add_to(container)


def overrides(args: argparse.Namespace, *groups: FlagGroup) -> dict[str, Any]:
    """The settings the given groups' flags set, as a nested dict (absent flags left out)."""
    ov: dict[str, Any] = {}
    for g in groups:
        for flag in g.flags:
            put(ov, flag.setting, flag.value(args))
    return ov


def add_common(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and ``--log-level``: every command that reads settings has them."""
    p.add_argument("--config", metavar="FILE", help="TOML settings file (also EMOMON_CONFIG)")
    p.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any setting, e.g. --set vad.aggressiveness=3 (repeatable)",
    )
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=None,
        help=f"(default {setting_default('log_level')})",
    )


def add_operations(p: argparse.ArgumentParser) -> None:
    """The :data:`METRICS` group and ``--log-json``: the long-running distributed commands."""
    group = p.add_argument_group(METRICS.title)
    for flag in METRICS.flags:
        flag.add_to(group)
    group.add_argument(
        "--log-json", action="store_true", help="one JSON object per log line (for log shippers)"
    )


_MODES = ("auto", "cpu", "cuda")

SOURCE = FlagGroup(
    "source",
    (Flag(("--realtime",), "source.realtime", "pace file input like a live source", "on"),),
)
SESSION = FlagGroup(
    "session",
    (Flag(("--session",), "source.session", "session id (default: derived from the source)"),),
)
RTP = FlagGroup(
    "rtp",
    (Flag(("--sdp",), "source.rtp_sdp", "SDP file for RTP dynamic payload types", metavar="FILE"),),
)
STREAMER = FlagGroup(
    "streamer",
    (
        Flag(
            ("--asr-model",),
            "asr.model",
            "tiny.en (shipped, English), base (shipped, multilingual) or a CTranslate2 folder",
            metavar="NAME_OR_PATH",
        ),
        Flag(
            ("--speakers",),
            "speakers.mode",
            "speaker attribution mode",
            choices=("auto", "channel", "cluster"),
        ),
        Flag(
            ("--num-speakers",),
            "speakers.num_speakers",
            "known number of people on a shared channel",
            metavar="N",
            type=int,
        ),
    ),
)
MODEL = FlagGroup(
    "emotion model",
    (
        Flag(
            ("--checkpoint",),
            "worker.checkpoint",
            "emotion model checkpoint (default: the shipped one)",
            metavar="DIR",
        ),
        Flag(("--device",), "worker.device", "where the emotion model runs", choices=_MODES),
        Flag(("--no-text",), "worker.include_text", "leave transcripts out of events", "off"),
    ),
)
SINKS = FlagGroup(
    "sinks",
    (
        Flag(
            ("--jsonl",),
            "jsonl.path",
            "write events to FILE as JSON lines, appended to what it holds",
            metavar="FILE",
        ),
        Flag(
            ("--jsonl-overwrite",),
            "jsonl.append",
            "start the --jsonl file afresh instead of appending",
            "off",
        ),
        Flag(
            ("--mqtt-url", "--mqtt"),
            "mqtt.url",
            "publish events to an MQTT broker: mqtt[s]://user:pass@host:port",
            metavar="URL",
        ),
        Flag(("--no-console",), "console.enabled", "do not print events on stdout", "off"),
    ),
)
MQTT = FlagGroup(
    "mqtt",
    (
        Flag(("--mqtt-prefix",), "mqtt.topic_prefix", "MQTT topic prefix", metavar="PREFIX"),
        Flag(
            ("--embedded-broker",),
            "mqtt.embedded_broker",
            "start an in-process MQTT broker",
            "on",
        ),
        Flag(("--ha-discovery",), "mqtt.ha_discovery", "Home Assistant MQTT discovery", "on"),
    ),
)
REDIS = FlagGroup(
    "redis",
    (
        Flag(("--redis-url",), "redis.url", "redis://[user:pass@]host:port/db", metavar="URL"),
        Flag(("--stream",), "redis.stream", "utterance stream key", metavar="KEY"),
        Flag(("--group",), "redis.group", "consumer group", metavar="NAME"),
        Flag(
            ("--dead-letter-stream",),
            "redis.dead_letter_stream",
            "dead-letter stream key",
            metavar="KEY",
        ),
        Flag(
            ("--maxlen",),
            "redis.maxlen",
            "approximate stream length bound, MAXLEN ~ N",
            metavar="N",
            type=int,
        ),
    ),
)
BUFFER = FlagGroup(
    "streamer",
    (
        Flag(
            ("--buffer-size",),
            "redis.buffer_size",
            "utterances held locally while Redis is away",
            metavar="N",
            type=int,
        ),
    ),
)
WORKER = FlagGroup(
    "worker",
    (
        Flag(
            ("--consumer",),
            "redis.consumer",
            "consumer name in the group; keep it stable across restarts (default host-pid)",
        ),
        Flag(
            ("--max-batch",),
            "worker.max_batch",
            "utterances per batch at most",
            metavar="N",
            type=int,
        ),
        Flag(
            ("--max-wait-ms",),
            "worker.max_wait_ms",
            "wait this long to fill a batch",
            metavar="MS",
            type=int,
        ),
        Flag(
            ("--claim-idle-ms",),
            "redis.claim_idle_ms",
            "reclaim entries idle this long from dead workers",
            metavar="MS",
            type=int,
        ),
        Flag(
            ("--max-deliveries",),
            "redis.max_deliveries",
            "dead-letter an entry after N failed deliveries",
            metavar="N",
            type=int,
        ),
        Flag(
            ("--context-ttl-s",),
            "redis.context_ttl_s",
            "forget a session's context after S idle seconds",
            metavar="S",
            type=int,
        ),
    ),
)
METRICS = FlagGroup(
    "operations",
    (
        Flag(
            ("--metrics-host",),
            "metrics.host",
            "address for /metrics and /healthz (default 127.0.0.1; 0.0.0.0 for all interfaces)",
            metavar="ADDR",
        ),
        Flag(
            ("--metrics-port",),
            "metrics.port",
            "serve /metrics and /healthz on PORT",
            metavar="PORT",
            type=int,
        ),
        Flag(
            ("--metrics-token",),
            "metrics.token",
            "require 'Authorization: Bearer TOKEN' on /metrics and /healthz (visible in ps: "
            "prefer EMOMON_METRICS__TOKEN)",
            metavar="TOKEN",
        ),
    ),
)
DASHBOARD = FlagGroup(
    "dashboard",
    (
        Flag(("--dashboard",), "dashboard.enabled", "serve the live dashboard page", "on"),
        Flag(
            ("--dashboard-host",),
            "dashboard.host",
            "address the dashboard listens on",
            metavar="ADDR",
        ),
        Flag(
            ("--dashboard-port",),
            "dashboard.port",
            "dashboard port (0: a free one)",
            metavar="PORT",
            type=int,
        ),
    ),
)
