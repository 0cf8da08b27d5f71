"""``python -m emomon.services`` = the ``emomon`` command."""

from emomon.services.cli import entrypoint

entrypoint()
