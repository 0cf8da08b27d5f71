"""``emomon train``, ``train-context``, ``evaluate``, ``bench-model``, ``train-audio``: the
emotion model's life cycle, as ordinary subcommands.

Their flags are the model package's own (:data:`emomon.model.cli.COMMANDS`); they are added
only when the command is invoked, so the rest of ``emomon`` never imports the training code.
"""

from __future__ import annotations

from functools import partial

from emomon.model import cli as model_cli
from emomon.services.commands.common import Command

COMMANDS = tuple(
    Command(name, help_, partial(model_cli.configure, name))
    for name, (_, help_) in model_cli.COMMANDS.items()
)
