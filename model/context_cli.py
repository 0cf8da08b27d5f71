"""``emomon train-context``: train the causal conversation-context model (CFN-ESA-style,
emotion-shift aware) on top of a frozen utterance checkpoint, on dialogue corpora."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .cli_common import (
    DATA_HELP,
    add_inference_args,
    command_line,
    describe,
    guarded,
    load_samples,
    training_flags,
)
from .datasets import Sample
from .errors import ConfigError


def configure(p: argparse.ArgumentParser) -> None:
    from .context import ContextConfig

    describe(p, __doc__, epilog=DATA_HELP)
    p.add_argument("--checkpoint", default=None, help="utterance checkpoint (default: shipped)")
    p.add_argument(
        "--out", required=True, help="new checkpoint folder: the utterance model + the context"
    )
    p.add_argument("--data", default="meld", help="dialogue corpora: meld, iemocap, manifest")
    add_inference_args(
        p,
        "the utterance model's path while making turn memories (as at inference)",
        "--memory-batch-size",
    )
    training_flags(p, ContextConfig)
    p.set_defaults(func=guarded(_train_context))


def _train_context(args: argparse.Namespace) -> int:
    import shutil

    from .checkpoint import DEFAULT_CHECKPOINT, weights_sha
    from .context import ContextConfig, model_logits, save_context, train_context, turn_data
    from .evaluation import base_outputs, conversation_keys
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
            samples += load_samples(n, args, split, model.labels, model.cfg.context_turns)
        samples = [s for s in samples if s.dialogue]
        if not samples:
            raise ConfigError(f"no {split} samples with dialogue structure in --data {args.data}")
        logits, feats, y, _ = base_outputs(model, samples, args.cache_dir, args.memory_batch_size)
        groups, speakers = conversation_keys(samples)
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
            "command": command_line("train-context"),
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
