"""``emomon evaluate``: accuracy, weighted F1, per-class F1, confusion-matrix PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_common import (
    DATA_HELP,
    add_data_args,
    add_inference_args,
    add_split_args,
    command_line,
    data_record,
    describe,
    guarded,
    label_record,
    load_samples,
)
from .errors import ConfigError


def configure(p: argparse.ArgumentParser) -> None:
    describe(p, __doc__, epilog=DATA_HELP)
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
    add_inference_args(p, "as EmotionModel.load", "--batch-size")
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
    add_data_args(p)
    add_split_args(p, train=False)
    p.set_defaults(func=guarded(_evaluate))


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_samples
    from .inference import EmotionModel
    from .metrics import plot_confusion

    model = EmotionModel.load(
        args.checkpoint, device="cpu", quantize=args.quantize, fusion=args.fusion
    )
    if args.min_confidence is not None:
        model.min_confidence = args.min_confidence
    samples = load_samples(args.data, args, "test", model.labels, model.cfg.context_turns)
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
        command=command_line("evaluate"),
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
