"""What every ``emomon`` subcommand shares: its registry entry, the user-facing error, settings
from flags, logging set-up, and the errors a running pipeline converts into that user error.

Command modules import from here (and from :mod:`.flags`); they never import
:mod:`emomon.services.cli`, which only assembles them into one parser.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emomon.services.redact import RedactingFilter, redact_url
from emomon.services.settings import Settings, SettingsError, load_settings


class CliError(RuntimeError):
    """A user-facing error: printed as one line, exit status 2 (or ``code``)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and one-line help, and ``configure(parser)``, which adds its
    flags and sets ``func(args) -> int``.

    ``configure`` runs only for the command being invoked (or for all when the full parser is
    built), so a command whose flags come from a heavy module (the training recipes, torch)
    costs nothing to the others.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    description: str | None = None


def put(overrides: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``overrides['a']['b'] = value`` for ``dotted = 'a.b'``; ``None`` means 'not given'."""
    if value is None:
        return
    node = overrides
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def settings_from_args(
    args: argparse.Namespace, overrides: dict[str, Any] | None = None
) -> Settings:
    """Effective settings for a command: defaults < TOML < env < ``--set`` and the command's own flags."""
    ov: dict[str, Any] = overrides or {}
    for item in getattr(args, "set_", []) or []:
        if "=" not in item:
            raise SettingsError(f"--set expects SECTION.FIELD=VALUE, got {redact_url(item)!r}")
        key, raw = item.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        put(ov, key.strip(), value)
    put(ov, "log_level", getattr(args, "log_level", None))
    return load_settings(getattr(args, "config", None), ov)


def setup_logging(level: str, as_json: bool = False) -> None:
    """Log to stderr at ``level``; ``as_json``: one JSON object per line (for log shippers)."""
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in (
        "faster_whisper",
        "httpx",
        "urllib3",
        "transformers",
        "amqtt",
        "hpack",
        "asyncio",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))
    formatter = JsonLogFormatter() if as_json else None
    if formatter is not None:
        formatter.converter = time.gmtime
    for handler in logging.getLogger().handlers:
        # a password in a URL that any library logs is masked before it is written
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
        if formatter is not None:
            handler.setFormatter(formatter)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (+ exception), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, ensure_ascii=False)


def pipeline_errors() -> tuple[type[Exception], ...]:
    """The error families of a running pipeline that a command reports as one line.

    A function, not a constant, so that naming them in an ``except`` clause imports their
    modules (the speaker models pull in torch) only when something actually went wrong.
    """
    from emomon.services.publish.base import SinkError
    from emomon.services.worker import WorkerError
    from emomon.streamer.end_of_turn import EndOfTurnModelError
    from emomon.streamer.shared_models import SpeakerModelError
    from emomon.streamer.sources.base import SourceError
    from emomon.streamer.transcriber import TranscriberError

    return (
        SourceError,
        SinkError,
        WorkerError,
        TranscriberError,
        SpeakerModelError,
        EndOfTurnModelError,
    )
