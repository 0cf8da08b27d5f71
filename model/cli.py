"""Command lines: ``train``, ``evaluate`` and ``bench-model`` (issue #2, item 6).

The lead wires these as ``emomon train|evaluate|bench-model``; until then:
``python -m emomon.model.cli train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache import default_cache_dir
from .config import VARIANTS, ModelConfig, field_names, variant_config
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


def _add_data_args(p: argparse.ArgumentParser) -> None:
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


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _config_from_args(args: argparse.Namespace) -> ModelConfig:
    overrides: dict[str, Any] = {}
    if args.config_json:
        overrides.update(json.loads(Path(args.config_json).read_text()))
    for kv in args.set or []:
        k, sep, v = kv.partition("=")
        if not sep or k not in field_names():
            raise ConfigError(f"--set {kv!r}: use FIELD=VALUE with FIELD one of {field_names()}")
        overrides[k] = _parse_value(v)
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


def _sessions(spec: str) -> list[int]:
    return parse_actor_range(spec)


def _load(
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
            pool = load_iemocap(root, _sessions(args.train_sessions), labels, ctx)
            kept, held = split_dialogues(pool, fraction, seed=0)
            return kept if part == "train" else held
        sess = {"train": args.train_sessions, "dev": args.dev_sessions, "test": args.test_sessions}[
            part
        ]
        return load_iemocap(root, _sessions(sess), labels, ctx) if sess else []
    if name == "manifest":
        if not args.manifest:
            raise ConfigError("--data manifest needs --manifest")
        if manifest_has_split(args.manifest):  # a ``split`` column: train / dev / test rows
            return load_manifest(args.manifest, labels, part)
        return load_manifest(args.manifest, labels) if part in ("train", "test") else []
    raise ConfigError(f"unknown dataset {name!r}; use meld, ravdess, tess, iemocap, manifest")


def _split_name(name: str, args: argparse.Namespace, part: str) -> str:
    """In words, which part of corpus ``name`` :func:`_load` reads for ``part``."""
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
        "split": {n: _split_name(n, args, part) for n in names},
    }


def label_record(labels: Sequence[str]) -> dict[str, Any]:
    """The label space by name (:data:`LABEL_SETS`; ``custom`` otherwise) and its classes."""
    name = next((k for k, v in LABEL_SETS.items() if tuple(v) == tuple(labels)), "custom")
    return {"name": name, "labels": list(labels)}


def _split_args(p: argparse.ArgumentParser, train: bool) -> None:
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


def _add_fields(p: argparse.ArgumentParser, cls: Any) -> None:
    """One ``--flag`` per field of the dataclass ``cls``, typed and defaulted like the field."""
    for f in dataclasses.fields(cls):
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"{cls.__name__}.{f.name}",
        )


def _run(fn: Any, args: argparse.Namespace) -> int:
    """Run a command; a ModelError is one line on stderr and exit status 2."""
    try:
        return int(fn(args))
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _training_command(p: argparse.ArgumentParser, fields: Any, fn: Any, argv: list[str]) -> int:
    """The common tail of a training command: its recipe's flags, data and split flags, run."""
    _add_fields(p, fields)
    _add_data_args(p)
    _split_args(p, train=True)
    return _run(fn, p.parse_args(argv))


# ----------------------------------------------------------------------------- train
def train_main(argv: list[str]) -> int:
    """``emomon train``: cache frozen features, train, keep the best checkpoint."""
    from .train import TrainConfig

    p = argparse.ArgumentParser(
        prog="emomon train",
        description=train_main.__doc__,
        formatter_class=HelpFormatter,
        epilog=DATA_HELP,
    )
    p.add_argument(
        "--data", default="meld,ravdess,tess", help="comma list: meld,ravdess,tess,iemocap,manifest"
    )
    p.add_argument("--variant", default="full", choices=sorted(VARIANTS), help="config.VARIANTS")
    p.add_argument("--config-json", default=None, help="JSON file of ModelConfig overrides")
    p.add_argument(
        "--set",
        action="append",
        help="FIELD=VALUE ModelConfig override (repeatable), e.g. text_encoder=all-mpnet-base-v2",
    )
    p.add_argument(
        "--iemocap-labels",
        default="7",
        choices=["7", "6"],
        help="7: IEMOCAP mapped onto the MELD classes; 6: IEMOCAP's hap, sad, neu, ang, exc, fru "
        "as the model's own labels (happy, sad, neutral, angry, excited, frustrated)",
    )
    p.add_argument(
        "--out", required=True, help="run folder (best/ = checkpoint, last.pt = resume state)"
    )
    p.add_argument("--no-resume", action="store_true", help="start afresh even if last.pt exists")
    p.add_argument(
        "--meld-train-fraction",
        type=float,
        default=1.0,
        help="cheap runs: use a fraction of MELD train",
    )
    p.add_argument(
        "--tess-max",
        type=int,
        default=0,
        help="use a seeded random subset of this many TESS clips (0 = all)",
    )
    return _training_command(p, TrainConfig, _train, argv)


def _train(args: argparse.Namespace) -> int:
    import numpy as np

    from .features import FeatureStore, TextFrontEnd
    from .train import TrainConfig, encode_samples, train

    cfg = _config_from_args(args)
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    train_s: list[Sample] = []
    dev_s: list[Sample] = []
    for n in names:
        tr = _load(n, args, "train", cfg.labels, cfg.context_turns)
        if n == "meld" and args.meld_train_fraction < 1.0:
            rng = np.random.default_rng(tc.seed)
            tr = [
                tr[i]
                for i in sorted(
                    rng.choice(len(tr), int(len(tr) * args.meld_train_fraction), replace=False)
                )
            ]
        train_s += tr
        dev_s += _load(n, args, "dev", cfg.labels, cfg.context_turns)
    if not train_s or not dev_s:
        raise ConfigError("no training or no dev samples; check --data and the split flags")
    print(f"train {len(train_s)} / dev {len(dev_s)} samples; variant {args.variant}", flush=True)
    text_fe = TextFrontEnd(cfg) if cfg.uses_text else None
    store = FeatureStore(cfg, args.cache_dir, text_fe)
    tr_enc = encode_samples(train_s, store, cfg.labels)
    dev_enc = encode_samples(dev_s, store, cfg.labels)
    meta = {
        "command": "emomon train "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["train"] else sys.argv[1:]),
        "data": names,
        "n_train": len(train_s),
        "n_dev": len(dev_s),
        "ravdess_train_actors": args.train_actors if "ravdess" in names else None,
        "ravdess_dev_actors": args.dev_actors if "ravdess" in names else None,
        "label_set": label_record(cfg.labels),
        "train_data": data_record(names, args, "train"),
        "dev_data": data_record(names, args, "dev"),
    }
    state = train(
        cfg, tc, tr_enc, dev_enc, text_fe, args.out, resume=not args.no_resume, extra_meta=meta
    )
    print(
        json.dumps(
            {
                "best_dev_score": state["best"],
                "epochs": state["epoch"],
                "out": str(Path(args.out) / "best"),
            }
        )
    )
    return 0


# -------------------------------------------------------------------------- evaluate
def evaluate_main(argv: list[str]) -> int:
    """``emomon evaluate``: accuracy, weighted F1, per-class F1, confusion-matrix PNG."""
    p = argparse.ArgumentParser(
        prog="emomon evaluate",
        description=evaluate_main.__doc__,
        formatter_class=HelpFormatter,
        epilog=DATA_HELP,
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint folder (default: the shipped one)"
    )
    p.add_argument("--data", required=True, help="meld | ravdess | tess | iemocap | manifest")
    p.add_argument("--split", default="test", help="MELD split: train | dev | test")
    p.add_argument("--tess-eval", action="store_true", help="evaluate on all of TESS")
    p.add_argument("--modalities", default="text,audio", help="use only these inputs (e.g. text)")
    p.add_argument("--out-json", default=None, help="write the full report (JSON) here")
    p.add_argument("--out-png", default=None, help="write the confusion-matrix picture here")
    p.add_argument("--title", default=None, help="the picture's title (default: data and scores)")
    p.add_argument(
        "--quantize", default="auto", choices=["auto", "int8", "none"], help="as EmotionModel.load"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="utterances per forward pass; 1 (default) = a live session at low load. With int8 "
        "on CPU, larger batches are faster but shift answers slightly",
    )
    p.add_argument(
        "--context",
        default="on",
        choices=["on", "off"],
        help="on: utterances of a dialogue see the turns before them through the checkpoint's "
        "context model, if it has one (as in a live session); off: each utterance alone",
    )
    p.add_argument(
        "--fusion",
        default="auto",
        choices=["auto", "gated", "jfm"],
        help="gated: text-led fusion with the checkpoint's audio expert and gate; jfm: the "
        "utterance network's joint answer (the paper's method); auto: gated when available",
    )
    p.add_argument(
        "--level",
        default="as-recorded",
        choices=["as-recorded", "peak", "peak-20"],
        help="gated fusion: play the clips as recorded, peak-normalised to -1 dBFS, or that "
        "attenuated by 20 dB (the level-invariance check)",
    )
    p.add_argument(
        "--speaker-sessions",
        action="store_true",
        help="gated fusion: read each clip relative to its speaker's earlier clips (seeded order, "
        "causal), as a live session reads each speaker; default: each clip alone",
    )
    p.add_argument("--no-veto", action="store_true", help="gated fusion without the text veto")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="count answers below this confidence as 'uncertain' (default: the checkpoint's)",
    )
    _add_data_args(p)
    _split_args(p, train=False)
    args = p.parse_args(argv)
    try:
        return _evaluate(args)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def base_outputs(
    model: Any, samples: list[Sample], cache_dir: str, batch_size: int = 1
) -> tuple[Any, Any, Any, list[Any]]:
    """The utterance network's logits (N, C) and fused features (N, D_F) for ``samples``
    through the feature cache, and their label indices (N,). ``batch_size`` 1 is what a live
    session does at low load; with int8 on CPU larger batches change answers slightly (dynamic
    quantisation scales activations per batch, and the padding of batch-mates is counted)."""
    import numpy as np

    from .features import FeatureStore
    from .train import encode_samples, outputs_encoded

    cfg = model.cfg
    store = FeatureStore(cfg, cache_dir, model.text_fe, text_batch=batch_size)
    enc = encode_samples(samples, store, cfg.labels)
    audio_dim = cfg.whisper_dim if cfg.audio_frontend == "whisper" else cfg.mel_bins
    logits, feats = outputs_encoded(
        model.net, enc, model.net.text_dim, audio_dim, batch_size=batch_size
    )
    return logits, feats, np.array([e.label for e in enc]), enc


def _conversation_keys(samples: Sequence[Sample]) -> tuple[list[str], list[str]]:
    """Dialogue and speaker per sample; an isolated clip is a dialogue of its own."""
    groups = [s.dialogue or f"\x00{s.uid}" for s in samples]
    return groups, [s.speaker for s in samples]


def evaluate_samples(
    model: Any,
    samples: list[Sample],
    cache_dir: str,
    modalities: set[str],
    context: bool = True,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Evaluate an :class:`EmotionModel` on samples through the feature cache. With
    ``context`` and a checkpoint that has a context model, samples of a dialogue see the
    turns before them (causal), as in a live session; isolated clips are unaffected."""
    import dataclasses as dc

    import torch

    from .context import model_logits, turn_data
    from .metrics import classification_report

    cfg = model.cfg
    if "audio" not in modalities:
        samples = [dc.replace(s, audio_path=None) for s in samples]
    if "text" not in modalities:
        samples = [dc.replace(s, text=None) for s in samples]
    logits, feats, y, enc = base_outputs(model, samples, cache_dir, batch_size)
    use_ctx = context and model.context is not None
    n_ctx = 0
    if use_ctx:
        groups, speakers = _conversation_keys(samples)
        td = turn_data(feats, logits, y, groups, speakers, model.context.cfg.turns)
        n_ctx = int((td.hist >= 0).any(1).sum())
        logits = model_logits(model.context, td).numpy()
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    rep = classification_report(y, probs.argmax(1), cfg.labels)
    from .gate import expected_calibration_error

    rep["ece_15"] = round(100 * expected_calibration_error(probs, y), 2)
    rep["fusion"] = "jfm"
    rep["modalities_used"] = {
        "text": int(sum(e.text is not None for e in enc)),
        "audio": int(sum(e.audio is not None for e in enc)),
    }
    rep["batch_size"] = batch_size
    rep["context"] = {
        "used": bool(use_ctx),
        "utterances_with_history": n_ctx,
        "turns": model.context.cfg.turns if use_ctx else 0,
    }
    return rep


def _evaluate(args: argparse.Namespace) -> int:
    from .inference import EmotionModel
    from .metrics import plot_confusion

    model = EmotionModel.load(
        args.checkpoint, device="cpu", quantize=args.quantize, fusion=args.fusion
    )
    if args.min_confidence is not None:
        model.min_confidence = args.min_confidence
    samples = _load(args.data, args, "test", model.labels, model.cfg.context_turns)
    if not samples:
        raise ConfigError("no samples selected; check --test-actors / --test-sessions / --split")
    if model.gate is not None:
        from . import expert_data
        from .evaluation import gated_report

        gain = {"as-recorded": 0.0, "peak": expert_data.PEAK, "peak-20": expert_data.PEAK_MINUS_20}
        rep = gated_report(
            model,
            samples,
            args.cache_dir,
            set(args.modalities.split(",")),
            batch_size=args.batch_size,
            context=args.context == "on",
            gain_db=gain[args.level],
            veto=not args.no_veto,
            sessions=args.speaker_sessions,
        )
        rep["level_variant"] = args.level
    else:
        if args.level != "as-recorded" or args.speaker_sessions:
            raise ConfigError(
                "--level and --speaker-sessions need a checkpoint with text-led fusion"
            )
        rep = evaluate_samples(
            model,
            samples,
            args.cache_dir,
            set(args.modalities.split(",")),
            context=args.context == "on",
            batch_size=args.batch_size,
        )
    record = data_record([args.data], args, "test")
    requested = sorted(m for m in args.modalities.split(",") if m)
    with_text_context = (
        sum(1 for s in samples if s.context and s.text)
        if model.cfg.context_turns > 0 and "text" in requested
        else 0
    )
    # the earlier utterances' words as the text encoder's second segment (ModelConfig.context_turns)
    rep["text_context"] = {
        "turns": model.cfg.context_turns if with_text_context else 0,
        "utterances_with_context": with_text_context,
    }
    rep.update(
        model_id=model.model_id,
        int8_dynamic_quantization=model.quantized,
        checkpoint=str(args.checkpoint or "shipped default"),
        data=args.data,
        data_folders=record["folders"],
        split=record["split"][args.data],
        label_set=label_record(model.labels),
        modalities_requested=requested,
        model_modalities=list(model.cfg.modalities),
        command="emomon evaluate "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["evaluate"] else sys.argv[1:]),
    )
    print(json.dumps({k: v for k, v in rep.items() if k != "confusion"}, indent=2))
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(rep, indent=2) + "\n")
    if args.out_png:
        title = (
            args.title
            or f"{args.data} {rep['split'] or ''}: acc {rep['accuracy']} / W-F1 {rep['weighted_f1']}"
        )
        plot_confusion(rep, model.labels, args.out_png, title)
    return 0


# ---------------------------------------------------------------------- train-context
def train_context_main(argv: list[str]) -> int:
    """``emomon train-context``: train the causal conversation-context model (CFN-ESA-style,
    emotion-shift aware) on top of a frozen utterance checkpoint, on dialogue corpora."""
    from .context import ContextConfig

    p = argparse.ArgumentParser(
        prog="emomon train-context",
        description=train_context_main.__doc__,
        formatter_class=HelpFormatter,
        epilog=DATA_HELP,
    )
    p.add_argument("--checkpoint", default=None, help="utterance checkpoint (default: shipped)")
    p.add_argument(
        "--out", required=True, help="new checkpoint folder: the utterance model + the context"
    )
    p.add_argument("--data", default="meld", help="dialogue corpora: meld, iemocap, manifest")
    p.add_argument(
        "--quantize",
        default="auto",
        choices=["auto", "int8", "none"],
        help="the utterance model's path while making turn memories (as at inference)",
    )
    p.add_argument(
        "--memory-batch-size",
        type=int,
        default=1,
        help="utterances per forward pass; 1 (default) = a live session at low load. With int8 "
        "on CPU, larger batches are faster but shift answers slightly",
    )
    return _training_command(p, ContextConfig, _train_context, argv)


def _train_context(args: argparse.Namespace) -> int:
    import shutil

    from .checkpoint import DEFAULT_CHECKPOINT, weights_sha
    from .context import ContextConfig, model_logits, save_context, train_context, turn_data
    from .inference import EmotionModel
    from .metrics import classification_report

    cc = ContextConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ContextConfig)})
    src = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    out = Path(args.out)
    if out.resolve() == src.resolve():
        raise ConfigError("--out must differ from --checkpoint (the source is copied into it)")
    model = EmotionModel.load(src, device="cpu", quantize=args.quantize, context=False)
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    data: dict[str, Any] = {}
    for split in ("train", "dev"):
        samples: list[Sample] = []
        for n in names:
            samples += _load(n, args, split, model.labels, model.cfg.context_turns)
        samples = [s for s in samples if s.dialogue]
        if not samples:
            raise ConfigError(f"no {split} samples with dialogue structure in --data {args.data}")
        logits, feats, y, _ = base_outputs(model, samples, args.cache_dir, args.memory_batch_size)
        groups, speakers = _conversation_keys(samples)
        data[split] = turn_data(feats, logits, y, groups, speakers, cc.turns)
        print(f"{split}: {len(samples)} utterances", flush=True)
    dev_y = data["dev"].labels.numpy()

    def score(dev_logits: Any) -> float:
        rep = classification_report(dev_y, dev_logits.argmax(1).numpy(), model.labels)
        return float(rep["weighted_f1"])

    base_dev = score(data["dev"].logits)
    t0 = time.perf_counter()
    ctx, report = train_context(cc, data["train"], data["dev"], score)
    dev_rep = classification_report(
        dev_y, model_logits(ctx, data["dev"]).argmax(1).numpy(), model.labels
    )
    out.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "labels.json", "model.safetensors", "metrics.json"):
        if (src / f).is_file():
            shutil.copyfile(src / f, out / f)
    save_context(
        ctx,
        out,
        extra={
            "command": "emomon train-context "
            + " ".join(sys.argv[2:] if sys.argv[1:2] == ["train-context"] else sys.argv[1:]),
            "utterance_model_sha256": weights_sha(src),
            "data": names,
            "n_train": len(data["train"].labels),
            "n_dev": len(data["dev"].labels),
            "memory_batch_size": args.memory_batch_size,
            "dev_weighted_f1_without_context": base_dev,
            "dev_weighted_f1": dev_rep["weighted_f1"],
            "dev_accuracy": dev_rep["accuracy"],
            "heads": report,
            "train_s": round(time.perf_counter() - t0, 1),
        },
    )
    print(
        json.dumps(
            {
                "dev_weighted_f1_without_context": base_dev,
                "dev_weighted_f1": dev_rep["weighted_f1"],
                "dev_accuracy": dev_rep["accuracy"],
                "out": str(out),
            }
        )
    )
    return 0


# ----------------------------------------------------------------------------- bench
def bench_main(argv: list[str]) -> int:
    """``emomon bench-model``: parameters, checkpoint size, CPU latency and throughput."""
    p = argparse.ArgumentParser(
        prog="emomon bench-model", description=bench_main.__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (None: the shipped one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls")
    p.add_argument(
        "--audio-s", type=float, default=3.0, help="utterance length for the audio input"
    )
    p.add_argument(
        "--raw-audio", action="store_true", help="give PCM instead of precomputed Whisper frames"
    )
    p.add_argument(
        "--quantize", default="auto", choices=["auto", "int8", "none"], help="as EmotionModel.load"
    )
    p.add_argument(
        "--history",
        type=int,
        default=8,
        help="earlier turns given to each utterance (the context model's input; 0 = none)",
    )
    p.add_argument("--out-json", default=None, help="also write the results (JSON) here")
    args = p.parse_args(argv)
    try:
        return _bench(args)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .checkpoint import DEFAULT_CHECKPOINT
    from .inference import EmotionInput, EmotionModel

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = EmotionModel.load(args.checkpoint, device=args.device, quantize=args.quantize)
    load_s = time.perf_counter() - t0
    ck = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    size = sum(f.stat().st_size for f in ck.iterdir() if f.is_file())
    rng = np.random.default_rng(0)
    texts = [
        "I can't believe you did that!",
        "Okay, fine, whatever you say.",
        "Oh my God, that's amazing news!",
        "Please leave me alone right now.",
        "So what are we going to do about the apartment?",
    ]
    n_frames = int(args.audio_s * 50)

    def make(i: int) -> EmotionInput:
        if args.raw_audio:
            return EmotionInput(
                texts[i % len(texts)],
                audio=(0.1 * rng.standard_normal(int(args.audio_s * 16000))).astype(np.float32),
            )
        frames = rng.standard_normal((n_frames, model.cfg.whisper_dim)).astype(np.float32)
        return EmotionInput(
            texts[i % len(texts)],
            whisper_frames=frames if model.audio_frontend == "whisper" else None,
            audio=None
            if model.audio_frontend == "whisper"
            else (0.1 * rng.standard_normal(int(args.audio_s * 16000))).astype(np.float32),
        )

    history: tuple[Any, ...] = ()
    if model.context is not None and args.history > 0:
        from .context import ContextTurn

        mem = model.predict([make(0)])[0].memory
        assert mem is not None
        history = tuple(ContextTurn(mem, i % 2 == 0) for i in range(args.history))

    def with_history(x: EmotionInput) -> EmotionInput:
        return dataclasses.replace(x, history=history)

    one = [with_history(make(0))]
    many = [with_history(make(i)) for i in range(32)]
    for _ in range(5):
        model.predict(one)
    lat = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        model.predict(one)
        lat.append(time.perf_counter() - t)
    model.predict(many)
    reps = max(3, args.repeats // 5)
    t = time.perf_counter()
    for _ in range(reps):
        model.predict(many)
    thr = 32 * reps / (time.perf_counter() - t)
    trainable = model.param_counts.get("network_trained", 0)
    frozen = model.param_counts.get("text_encoder_frozen", 0)
    res = {
        "model_id": model.model_id,
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "int8_dynamic_quantization": model.quantized,
        "load_s": round(load_s, 2),
        "params_trainable_stored": trainable,
        "params_frozen_text_encoder_used": frozen,
        "checkpoint_bytes": size,
        "latency_ms_batch1_median": round(1000 * float(np.median(lat)), 2),
        "latency_ms_batch1_p90": round(1000 * float(np.percentile(lat, 90)), 2),
        "throughput_utt_per_s_batch32": round(thr, 1),
        "audio_s": args.audio_s,
        "context_turns": len(history),
        "params_context_stored": sum(p.numel() for p in model.context.parameters())
        if model.context is not None
        else 0,
        "input": "PCM (Whisper encoder included)"
        if args.raw_audio
        else "text + precomputed Whisper frames (ASR pass excluded)",
    }
    print(json.dumps(res, indent=2))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


COMMANDS = {
    "train": train_main,
    "train-context": train_context_main,
    "evaluate": evaluate_main,
    "bench-model": bench_main,
    "train-audio": lambda argv: __import__(
        "emomon.model.audio_cli", fromlist=["train_audio_main"]
    ).train_audio_main(argv),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m emomon.model.cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
