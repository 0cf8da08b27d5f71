"""The model's command lines: ``train``, ``train-context``, ``evaluate``, ``bench-model`` and
``train-audio``, one module each (``*_cli.py``) over the library.

``emomon NAME`` (services/commands/model_commands.py) and ``python -m emomon.model.cli NAME``
both look the commands up in :data:`COMMANDS`; each module's ``configure(parser)`` adds its
flags and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .cli_common import standalone

#: name -> (module under emomon.model, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "train_cli",
        "train an emotion model (MELD / IEMOCAP / RAVDESS / TESS / manifest)",
    ),
    "train-context": (
        "context_cli",
        "train the causal conversation-context model on dialogues (MELD / IEMOCAP / manifest)",
    ),
    "evaluate": (
        "evaluate_cli",
        "evaluate a checkpoint: accuracy, W-F1, per-class F1, confusion PNG",
    ),
    "bench-model": (
        "bench_cli",
        "fusion-model latency (batch 1) and throughput (batch 32) here",
    ),
    "train-audio": (
        "audio_cli",
        "choose and train the audio expert (cross-corpus), fit the text-led fusion gate",
    ),
}


def configure(name: str, p: argparse.ArgumentParser) -> None:
    """Add command ``name``'s flags to ``p`` (importing its module only now)."""
    importlib.import_module(f"emomon.model.{COMMANDS[name][0]}").configure(p)


def train_main(argv: Sequence[str]) -> int:
    return _main("train", argv)


def train_context_main(argv: Sequence[str]) -> int:
    return _main("train-context", argv)


def evaluate_main(argv: Sequence[str]) -> int:
    return _main("evaluate", argv)


def bench_main(argv: Sequence[str]) -> int:
    return _main("bench-model", argv)


def _main(name: str, argv: Sequence[str]) -> int:
    return standalone(name, lambda p: configure(name, p), argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m emomon.model.cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return _main(argv[0], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
