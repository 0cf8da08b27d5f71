"""Subcommands of the `emomon` CLI, one module each, each with `register(subparsers)`."""
