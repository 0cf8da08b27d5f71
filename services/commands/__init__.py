"""Subcommands of the ``emomon`` CLI, one module each, each declaring its ``Command`` entries
(:mod:`.common`); shared flag groups live in :mod:`.flags`, source opening and session naming in
:mod:`.sessions`."""
