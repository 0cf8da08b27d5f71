"""``emomon train``: cache frozen features, train, keep the best checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .cli_common import (
    DATA_HELP,
    command_line,
    config_from_args,
    data_record,
    describe,
    guarded,
    label_record,
    load_samples,
    training_flags,
)
from .config import VARIANTS
from .datasets import Sample
from .errors import ConfigError


def configure(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    describe(p, __doc__, epilog=DATA_HELP)
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
    training_flags(p, TrainConfig)
    p.set_defaults(func=guarded(_train))


def _train(args: argparse.Namespace) -> int:
    import numpy as np

    from .features import FeatureStore, TextFrontEnd
    from .train import TrainConfig, encode_samples, train

    cfg = config_from_args(args)
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    train_s: list[Sample] = []
    dev_s: list[Sample] = []
    for n in names:
        tr = load_samples(n, args, "train", cfg.labels, cfg.context_turns)
        if n == "meld" and args.meld_train_fraction < 1.0:
            rng = np.random.default_rng(tc.seed)
            tr = [
                tr[i]
                for i in sorted(
                    rng.choice(len(tr), int(len(tr) * args.meld_train_fraction), replace=False)
                )
            ]
        train_s += tr
        dev_s += load_samples(n, args, "dev", cfg.labels, cfg.context_turns)
    if not train_s or not dev_s:
        raise ConfigError("no training or no dev samples; check --data and the split flags")
    print(f"train {len(train_s)} / dev {len(dev_s)} samples; variant {args.variant}", flush=True)
    text_fe = TextFrontEnd(cfg) if cfg.uses_text else None
    store = FeatureStore(cfg, args.cache_dir, text_fe)
    tr_enc = encode_samples(train_s, store, cfg.labels)
    dev_enc = encode_samples(dev_s, store, cfg.labels)
    meta = {
        "command": command_line("train"),
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
