"""The ``emomon`` console script: one entry point, one module per subcommand.

Every subcommand module in ``emomon.services.commands`` has ``register(subparsers)`` which adds
its parser and sets ``func(args) -> int``. Flags common to all live here: ``--config FILE``,
``--set section.field=value`` (repeatable, highest precedence) and ``--log-level``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from emomon.services.settings import Settings, SettingsError, load_settings

# Order = order in --help.
COMMAND_MODULES = (
    "run",
    "replay",
    "stream",
    "worker",
    "devices",
    "config",
    "model_commands",
)

log = logging.getLogger("emomon")


class CliError(RuntimeError):
    """A user-facing error: printed as one line, exit status 2 (or ``code``)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (also EMOMON_CONFIG)")
    p.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any setting, e.g. --set vad.aggressiveness=3 (repeatable)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)


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
            raise SettingsError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        put(ov, key.strip(), value)
    put(ov, "log_level", getattr(args, "log_level", None))
    return load_settings(getattr(args, "config", None), ov)


def setup_logging(level: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emomon",
        description="Real-time emotion monitor for conversations: audio in, per-speaker emotion events out.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"emomon.services.commands.{name}")
        mod.register(sub, add_common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Library deprecation chatter is not for the user of a CLI; real problems are logged by us.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    from emomon.services.commands.model_commands import PASSTHROUGH, dispatch

    if argv and argv[0] in PASSTHROUGH:
        return dispatch(PASSTHROUGH[argv[0]], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, SettingsError) as e:
        print(f"emomon: error: {e}", file=sys.stderr)
        return getattr(e, "code", 2)
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    # Run through the canonical module so exception classes are the ones commands raise.
    from emomon.services.cli import entrypoint as _entrypoint

    _entrypoint()
