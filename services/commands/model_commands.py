"""``emomon train``, ``emomon train-context``, ``emomon evaluate``, ``emomon bench-model``: the emotion model's life cycle.

Arguments are passed through untouched to ``emomon.model.cli`` (``emomon train --help`` lists
them); ``services/cli.py`` dispatches these names before its own parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS = (
    ("train", "train_main", "train an emotion model (MELD / IEMOCAP / RAVDESS / TESS / manifest)"),
    (
        "train-context",
        "train_context_main",
        "train the causal conversation-context model on dialogues (MELD / IEMOCAP / manifest)",
    ),
    (
        "evaluate",
        "evaluate_main",
        "evaluate a checkpoint: accuracy, W-F1, per-class F1, confusion PNG",
    ),
    ("bench-model", "bench_main", "fusion-model latency (batch 1) and throughput (batch 32) here"),
    (
        "train-audio",
        "train_audio_main",
        "choose and train the audio expert (cross-corpus), fit the text-led fusion gate",
    ),
)
PASSTHROUGH = {name: fn for name, fn, _ in COMMANDS}


def register(
    sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    for name, fn, help_ in COMMANDS:
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("model_args", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, fn=fn: dispatch(fn, a.model_args))


def dispatch(fn: str, argv: list[str]) -> int:
    if fn == "train_audio_main":
        from emomon.model import audio_cli

        return int(audio_cli.train_audio_main(argv) or 0)
    from emomon.model import cli

    return int(getattr(cli, fn)(argv) or 0)
