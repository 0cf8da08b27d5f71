"""``emomon config show``: print the effective settings (after TOML, env and flags)."""

from __future__ import annotations

import argparse
import json

from emomon.services.commands.common import Command, settings_from_args
from emomon.services.commands.flags import add_common


def configure(p: argparse.ArgumentParser) -> None:
    csub = p.add_subparsers(dest="config_cmd", metavar="ACTION")
    show = csub.add_parser(
        "show", help="print the effective settings as JSON (or TOML-like with --toml)"
    )
    add_common(show)
    show.set_defaults(func=_show)

    def _usage(_: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_usage)


COMMAND = Command("config", "show the effective configuration", configure)


def _show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    print(json.dumps(settings.dump(), indent=2, sort_keys=False))
    return 0
