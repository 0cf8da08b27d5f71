"""What the model commands share: data and split flags, the samples they select, the record
of what was read, ModelConfig overrides from flags, and running a command on its own parser.

The commands themselves (``train_cli``, ``context_cli``, ``evaluate_cli``, ``bench_cli``,
``audio_cli``) each have ``configure(parser)``; ``emomon`` and ``python -m emomon.model.cli``
build their parsers from it. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cache import default_cache_dir
from .config import ModelConfig, field_names, variant_config
from .data_dirs import DATA_DIR_ENV, data_dir
from .datasets import (
    IEMOCAP6_LABELS,
    LABEL_SETS,
    Sample,
    load_iemocap,
    load_manifest,
    load_meld,
    load_ravdess,
    load_tess,
    manifest_has_split,
    parse_actor_range,
    split_dialogues,
)
from .errors import ConfigError, DatasetError, ModelError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every flag's default and keeps the epilog's line breaks."""


#: the ``--help`` epilog of the commands that read data (docs/DATA.md says the same)
DATA_HELP = f"""\
data folders: the --<corpus>-dir flag, else $EMOMON_<CORPUS>_DIR, else ${DATA_DIR_ENV}/<corpus>
  (one folder with meld/ ravdess/ tess/ iemocap/ in it).

manifest (--data manifest --manifest FILE.jsonl|.csv|.tsv): one row per utterance.
  label     required: one of the model's labels, e.g. MELD-7:
            {", ".join(LABEL_SETS["meld7"])}
  text      transcript; empty = an audio-only row
  audio     clip path, absolute or relative to the manifest; empty = a text-only row
  id        unique id (default: <manifest name>/<row number>)
  group     what must stay on one side of a split (speaker, actor, dialogue)
  split     train | dev | test: each command reads its own rows. Without a split column
            every row is read for training and for evaluation, none for dev.
  dialogue  rows of one conversation share it, listed in conversation order (what the
            context model reads); empty = an isolated clip
  speaker   who speaks the row within its dialogue
  context   optional earlier utterances, a JSON list, oldest first
"""


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data", "folders: see 'data folders' below")
    g.add_argument("--meld-dir", default=None, help="folder with MELD's *_sent_emo.csv")
    g.add_argument(
        "--meld-audio-dir", default=None, help="MELD.Raw folder with dia{D}_utt{U}.mp4|wav|flac"
    )
    g.add_argument("--ravdess-dir", default=None, help="RAVDESS speech: the Actor_XX folders")
    g.add_argument("--tess-dir", default=None, help="TESS clips (OAF_word_emotion.wav)")
    g.add_argument("--iemocap-dir", default=None, help="IEMOCAP_full_release (or its parent)")
    g.add_argument("--manifest", default=None, help="JSONL/CSV manifest: format below")
    g.add_argument(
        "--cache-dir",
        default=str(default_cache_dir()),
        help="where frozen features are cached ($EMOMON_CACHE_DIR, else the user cache folder)",
    )


def parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    overrides: dict[str, Any] = {}
    if args.config_json:
        overrides.update(json.loads(Path(args.config_json).read_text()))
    for kv in args.set or []:
        k, sep, v = kv.partition("=")
        if not sep or k not in field_names():
            raise ConfigError(f"--set {kv!r}: use FIELD=VALUE with FIELD one of {field_names()}")
        overrides[k] = parse_value(v)
    if "text_encoder" in overrides and "text_encoder_id" not in overrides:
        from .text_encoders import text_encoder_id

        # the id keys the text-state cache: another encoder must not read MiniLM's states
        overrides["text_encoder_id"] = text_encoder_id(str(overrides["text_encoder"]))
    if getattr(args, "iemocap_labels", "7") == "6":
        if "labels" in overrides and tuple(overrides["labels"]) != IEMOCAP6_LABELS:
            raise ConfigError("--iemocap-labels 6 sets the labels; drop labels from --set")
        overrides["labels"] = IEMOCAP6_LABELS
    for k in ("labels", "modalities", "mel_patch"):
        if k in overrides and isinstance(overrides[k], list):
            overrides[k] = tuple(overrides[k])
    return variant_config(args.variant, **overrides)


def load_samples(
    name: str, args: argparse.Namespace, part: str, labels: tuple[str, ...], ctx: int
) -> list[Sample]:
    """Samples of corpus ``name`` for ``part`` (train | dev | test) per the split flags."""
    if name == "meld":
        split = (
            {"train": "train", "dev": "dev", "test": "test"}[part]
            if not getattr(args, "split", None)
            else args.split
        )
        meld_dir = data_dir("meld", args.meld_dir)
        return load_meld(meld_dir, split, args.meld_audio_dir, labels, ctx)
    if name == "ravdess":
        actors = {"train": args.train_actors, "dev": args.dev_actors, "test": args.test_actors}[
            part
        ]
        if not actors:
            return []
        return load_ravdess(
            data_dir("ravdess", args.ravdess_dir), parse_actor_range(actors), labels
        )
    if name == "tess":
        if not (part == "train" or getattr(args, "tess_eval", False)):
            return []
        tess = load_tess(data_dir("tess", args.tess_dir), labels)
        limit = getattr(args, "tess_max", 0)
        if limit and limit < len(tess):
            import numpy as np

            order = np.random.default_rng(0).permutation(len(tess))[
                :limit
            ]  # seeded, class-mixed subset
            tess = [tess[i] for i in sorted(order)]
        return tess
    if name == "iemocap":
        root = data_dir("iemocap", args.iemocap_dir)
        fraction = getattr(args, "iemocap_dev_fraction", 0.0)
        if fraction > 0 and part in ("train", "dev"):  # dev = whole dialogues of train sessions
            pool = load_iemocap(root, parse_actor_range(args.train_sessions), labels, ctx)
            kept, held = split_dialogues(pool, fraction, seed=0)
            return kept if part == "train" else held
        sess = {"train": args.train_sessions, "dev": args.dev_sessions, "test": args.test_sessions}[
            part
        ]
        return load_iemocap(root, parse_actor_range(sess), labels, ctx) if sess else []
    if name == "manifest":
        if not args.manifest:
            raise ConfigError("--data manifest needs --manifest")
        if manifest_has_split(args.manifest):  # a ``split`` column: train / dev / test rows
            return load_manifest(args.manifest, labels, part)
        return load_manifest(args.manifest, labels) if part in ("train", "test") else []
    raise ConfigError(f"unknown dataset {name!r}; use meld, ravdess, tess, iemocap, manifest")


def split_name(name: str, args: argparse.Namespace, part: str) -> str:
    """In words, which part of corpus ``name`` :func:`load_samples` reads for ``part``."""
    if name == "meld":
        return getattr(args, "split", None) or part
    if name == "ravdess":
        return f"actors {getattr(args, f'{part}_actors') or 'none'}"
    if name == "tess":
        if not (part == "train" or getattr(args, "tess_eval", False)):
            return "none"
        limit = getattr(args, "tess_max", 0)
        return f"a seeded {limit} clips" if limit else "all"
    if name == "iemocap":
        fraction = getattr(args, "iemocap_dev_fraction", 0.0)
        if fraction > 0 and part in ("train", "dev"):
            side = "without" if part == "train" else "only"
            return f"sessions {args.train_sessions}, {side} a seeded {fraction:g} of the dialogues"
        return f"sessions {getattr(args, f'{part}_sessions') or 'none'}"
    if name == "manifest" and args.manifest:
        return f"rows with split={part}" if manifest_has_split(args.manifest) else "all rows"
    return part


def data_record(names: Sequence[str], args: argparse.Namespace, part: str) -> dict[str, Any]:
    """Which corpora, folders and splits a command read: what its JSON output records."""
    folders: dict[str, str | None] = {}
    for n in names:
        if n == "manifest":
            folders[n] = str(Path(args.manifest).resolve()) if args.manifest else None
            continue
        try:
            folders[n] = str(data_dir(n, getattr(args, f"{n}_dir", None)).resolve())
        except DatasetError:
            folders[n] = None
        if n == "meld" and args.meld_audio_dir:
            folders["meld_audio"] = str(Path(args.meld_audio_dir).resolve())
    return {
        "corpora": list(names),
        "folders": folders,
        "split": {n: split_name(n, args, part) for n in names},
    }


def label_record(labels: Sequence[str]) -> dict[str, Any]:
    """The label space by name (:data:`LABEL_SETS`; ``custom`` otherwise) and its classes."""
    name = next((k for k, v in LABEL_SETS.items() if tuple(v) == tuple(labels)), "custom")
    return {"name": name, "labels": list(labels)}


def add_split_args(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("splits")
    g.add_argument(
        "--train-actors", default="1-16" if train else "", help="RAVDESS actors for training"
    )
    g.add_argument(
        "--dev-actors", default="17-18" if train else "", help="RAVDESS actors for early stopping"
    )
    g.add_argument(
        "--test-actors", default="" if train else "19-24", help="RAVDESS held-out actors"
    )
    g.add_argument("--train-sessions", default="1-3", help="IEMOCAP sessions for training")
    g.add_argument("--dev-sessions", default="4", help="IEMOCAP sessions for early stopping")
    g.add_argument("--test-sessions", default="5", help="IEMOCAP sessions for testing")
    if train:
        g.add_argument(
            "--iemocap-dev-fraction",
            type=float,
            default=0.0,
            help="IEMOCAP: dev = this seeded fraction of the dialogues of --train-sessions "
            "(held out of training; --dev-sessions is then unused; 0 = use --dev-sessions). "
            "The standard split: --train-sessions 1-4 --iemocap-dev-fraction 0.1 "
            "--test-sessions 5",
        )


def add_fields(p: argparse.ArgumentParser, cls: Any) -> None:
    """One ``--flag`` per field of the dataclass ``cls``, typed and defaulted like the field."""
    for f in dataclasses.fields(cls):
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"{cls.__name__}.{f.name}",
        )


def command_line(name: str) -> str:
    """The command as typed, for the records a command writes (``emomon NAME ARGS``)."""
    args = sys.argv[2:] if sys.argv[1:2] == [name] else sys.argv[1:]
    return f"emomon {name} " + " ".join(args)


def guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``fn`` with a :class:`ModelError` turned into one line on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except ModelError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


def training_flags(p: argparse.ArgumentParser, recipe: Any) -> None:
    """The common tail of a training command: its recipe's flags, data and split flags."""
    add_fields(p, recipe)
    add_data_args(p)
    add_split_args(p, train=True)


def standalone(
    name: str, configure: Callable[[argparse.ArgumentParser], None], argv: Sequence[str]
) -> int:
    """Run command ``name`` on a parser of its own (``python -m emomon.model.cli NAME``)."""
    p = argparse.ArgumentParser(prog=f"emomon {name}")
    configure(p)
    args = p.parse_args(list(argv))
    return int(args.func(args))


def add_inference_args(
    p: argparse.ArgumentParser, quantize_help: str, batch_flag: str | None = None
) -> None:
    """``--quantize`` (as :meth:`EmotionModel.load`) and, if named, the batch-size flag of a
    command that runs the utterance model."""
    p.add_argument(
        "--quantize", default="auto", choices=["auto", "int8", "none"], help=quantize_help
    )
    if batch_flag:
        p.add_argument(
            batch_flag,
            type=int,
            default=1,
            help="utterances per forward pass; 1 (default) = a live session at low load. With "
            "int8 on CPU, larger batches are faster but shift answers slightly",
        )


def describe(p: argparse.ArgumentParser, doc: str | None, epilog: str | None = None) -> None:
    """Give a command's parser its description (``doc``), the help layout with every default,
    and ``epilog`` (kept line by line)."""
    p.description = doc
    p.formatter_class = HelpFormatter
    p.epilog = epilog
