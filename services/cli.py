"""The ``emomon`` console script: one entry point, one module per subcommand.

Each module in ``emomon.services.commands`` declares its :class:`Command` entries (``COMMAND``
or ``COMMANDS``); this module only assembles them into one parser and runs the chosen one.
Only the invoked command's flags are built, so ``emomon stream`` never imports what the model
commands need. Flags common to all: ``--config FILE``, ``--set section.field=value``
(repeatable, highest precedence) and ``--log-level`` (:mod:`emomon.services.commands.flags`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from emomon.services.commands import (
    config,
    dashboard,
    devices,
    model_commands,
    replay,
    run,
    stream,
    worker,
)
from emomon.services.commands.common import CliError, Command
from emomon.services.redact import redact_url
from emomon.services.settings import SettingsError

__all__ = ["CliError", "build_parser", "entrypoint", "main"]

#: every subcommand, in the order of ``emomon --help``
COMMANDS: tuple[Command, ...] = (
    run.COMMAND,
    replay.COMMAND,
    stream.COMMAND,
    worker.COMMAND,
    dashboard.COMMAND,
    devices.COMMAND,
    config.COMMAND,
    *model_commands.COMMANDS,
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``emomon`` parser. With ``argv``, only the command it names gets its flags (the
    others are listed by name); without, every command is built in full."""
    parser = argparse.ArgumentParser(
        prog="emomon",
        description="Real-time emotion monitor for conversations: audio in, per-speaker emotion events out.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        if chosen is None or chosen == cmd.name:
            cmd.configure(p)
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
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, SettingsError) as e:
        print(f"emomon: error: {redact_url(str(e))}", file=sys.stderr)
        return getattr(e, "code", 2)
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    # Run through the canonical module so exception classes are the ones commands raise.
    from emomon.services.cli import entrypoint as _entrypoint

    _entrypoint()
