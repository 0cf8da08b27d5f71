"""``emomon train-audio``: choose, train and evaluate the audio expert, then fit the text-led
fusion gate and the temperatures, and write a checkpoint folder that uses them.

    emomon train-audio --ravdess-dir DIR --tess-dir DIR --meld-dir DIR --out FOLDER

Steps (all printed, all in ``FOLDER/audio_expert_report.json``):

1. clip statistics of every RAVDESS and TESS clip, clean, and ``--copies`` augmented copies
   of every RAVDESS clip and of a seeded ``--tess-aug`` TESS subset (cached);
2. the settings (speaker-relative input or not, augmentation or not, size) chosen by the
   cross-corpus dev score (model.audio_training): TESS → RAVDESS actors 1–18 and
   RAVDESS 1–18 → TESS speaker OAF;
3. the chosen settings on the held-out halves (TESS → RAVDESS 19–24 and all actors,
   RAVDESS 1–18 → TESS YAF and all of TESS), each next to the linear probe;
4. the shipped expert: RAVDESS actors 1–16 + all of TESS; RAVDESS 19–24 as recorded,
   peak-normalised to -1 dBFS, and peak-normalised then 20 dB quieter;
5. the text temperature on MELD dev (text with context, batch 1), the audio temperature and
   the gate on RAVDESS actors 17–18 (clean and augmented, their scripted text as transcript);
6. ``FOLDER`` = the base checkpoint + ``audio_expert.*`` + ``gate.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cli_common import command_line, guarded, standalone


def _log(msg: str) -> None:
    print(msg, flush=True)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0] if __doc__ else None
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument(
        "--ravdess-dir",
        default=None,
        help="RAVDESS speech (Actor_XX folders); default: "
        "$EMOMON_RAVDESS_DIR or $EMOMON_DATA_DIR/ravdess",
    )
    p.add_argument(
        "--tess-dir",
        default=None,
        help="TESS clips; default: $EMOMON_TESS_DIR or $EMOMON_DATA_DIR/tess",
    )
    p.add_argument(
        "--meld-dir",
        default=None,
        help="MELD CSVs (for the text temperature); default: "
        "$EMOMON_MELD_DIR or $EMOMON_DATA_DIR/meld",
    )
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--checkpoint", default=None, help="base checkpoint (default: the shipped one)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: the user cache dir)")
    p.add_argument("--copies", type=int, default=2, help="augmented copies per clip")
    p.add_argument(
        "--tess-aug", type=int, default=1000, help="TESS clips that get augmented copies"
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--members", type=int, default=5, help="seeded MLPs averaged in the shipped expert"
    )
    p.add_argument("--workers", type=int, default=2, help="processes computing Whisper frames")
    p.add_argument("--min-confidence", type=float, default=0.4, help="written into gate.json")
    p.add_argument("--text-veto", type=float, default=0.9, help="written into gate.json")
    p.add_argument(
        "--settings",
        default=None,
        help='skip the choice and use these expert settings (JSON, e.g. \'{"speaker_norm": true, "augmented": true}\')',
    )
    p.set_defaults(func=guarded(_train_audio))


def train_audio_main(argv: list[str]) -> int:
    return standalone("train-audio", configure, argv)


def _concat(parts: list[Any]) -> Any:
    from .audio_expert import ExpertData

    return ExpertData(
        *(
            np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(ExpertData)
        )
    )


def _train_audio(args: argparse.Namespace) -> int:
    import torch

    from .data_dirs import data_dir

    args.ravdess_dir = data_dir("ravdess", args.ravdess_dir)
    args.tess_dir = data_dir("tess", args.tess_dir)
    args.meld_dir = data_dir("meld", args.meld_dir)

    from . import expert_data
    from .audio_expert import AudioExpertConfig, expert_logits, save_expert, train_expert
    from .audio_training import actors, choose, cross_corpus, evaluate_expert, probe_predict, score
    from .cache import default_cache_dir
    from .checkpoint import DEFAULT_CHECKPOINT
    from .datasets import load_meld, load_ravdess, load_tess
    from .evaluation import text_logits
    from .gate import (
        GateConfig,
        expected_calibration_error,
        fit_gate,
        fit_temperature,
        fuse,
        save_gate,
    )
    from .inference import EmotionModel

    t0 = time.time()
    torch.manual_seed(args.seed)
    cache = Path(args.cache_dir or default_cache_dir())
    base_ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    model = EmotionModel.load(base_ckpt, device="cpu", fusion="jfm")
    labels = model.labels
    rav = load_ravdess(args.ravdess_dir, labels=labels)
    tess = load_tess(args.tess_dir, labels=labels)
    rng = np.random.default_rng(args.seed)
    tess_aug = [
        tess[i] for i in sorted(rng.choice(len(tess), min(args.tess_aug, len(tess)), replace=False))
    ]
    _log(f"clips: RAVDESS {len(rav)}, TESS {len(tess)} ({len(tess_aug)} augmented)")
    clean = expert_data.build(rav + tess, labels, cache, 0, workers=args.workers)
    parts = [clean]
    if args.copies:
        for group in (rav, tess_aug):
            d = expert_data.build(group, labels, cache, args.copies, workers=args.workers)
            parts.append(d.subset(d.copy > 0))
    data = _concat(parts)
    _log(f"rows: {len(data.y)} ({int((data.copy == 0).sum())} clean) [{time.time() - t0:.0f} s]")
    train_kw = {
        "epochs": args.epochs,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
    }
    base = AudioExpertConfig(labels=labels)
    report: dict[str, Any] = {
        "command": command_line("train-audio"),
        "train": train_kw,
    }

    # 2. choice on the cross-corpus dev halves
    if args.settings:
        settings = json.loads(args.settings)
        report["choice"] = {"given": settings}
    else:
        settings, rows = choose(data, base, train_kw, log=_log)
        report["choice"] = {"chosen": settings, "candidates": rows}
    _log(f"chosen: {settings}")
    cfg = dataclasses.replace(base, **{k: v for k, v in settings.items() if k != "augmented"})
    use = data if settings.get("augmented", True) else data.subset(data.copy == 0)

    # 3. held-out cross-corpus figures
    report["cross_corpus_heldout"] = cross_corpus(use, cfg, train_kw, heldout=True, log=_log)

    # 4. the shipped expert
    tr_mask = actors(use, range(1, 17)) | np.array([s.startswith("tess/") for s in use.speaker])
    train = use.subset(tr_mask)
    cfg = dataclasses.replace(cfg, trained_on=("ravdess actors 1-16", "tess"), members=args.members)
    expert, _ = train_expert(train, cfg, **train_kw)
    test_sets = {}
    for name, gain in (
        ("as recorded", 0.0),
        ("peak -1 dBFS", expert_data.PEAK),
        ("peak -1 dBFS, -20 dB", expert_data.PEAK_MINUS_20),
    ):
        test_s = load_ravdess(args.ravdess_dir, actors=range(19, 25), labels=labels)
        d = expert_data.build(test_s, labels, cache, 0, workers=args.workers, gain_db=gain)
        test_sets[name] = d
        r = evaluate_expert(expert, d, labels)
        r["probe"] = score(d.y, probe_predict(train, d).argmax(1), labels)
        report.setdefault("ravdess_19-24_audio_only", {})[name] = r
        _log(
            f"RAVDESS 19-24 {name}: expert {r['utterance']['accuracy']:.2f} % "
            f"(speaker mode {r.get('speaker', {}).get('accuracy', float('nan')):.2f}) probe {r['probe']['accuracy']:.2f} %"
        )

    # 5. temperatures and gate
    meld_dev = load_meld(args.meld_dir, "dev", labels=labels)
    tl_meld, _, y_meld, _ = text_logits(model, meld_dev, cache, batch_size=1, context=True)
    t_text = fit_temperature(tl_meld, y_meld)
    dev = use.subset(actors(use, (17, 18)))
    dev_samples = {s.uid: s for s in load_ravdess(args.ravdess_dir, actors=(17, 18), labels=labels)}
    uniq = sorted({dev_samples[u].text or "" for u in dev.clip})
    from .inference import EmotionInput

    tl_by_text = {}
    with torch.inference_mode():
        for t in uniq:
            lg, _, _ = model._network_pass([EmotionInput(text=t)], [t or None], [None])
            tl_by_text[t] = lg[0].float().numpy()
    tl_dev = np.stack([tl_by_text[dev_samples[u].text or ""] for u in dev.clip])
    # the live path reads a speaker's first turn alone and later ones against their earlier
    # turns: the audio temperature and the gate see dev logits of both readings
    modes = ("utterance", "speaker") if cfg.speaker_norm else ("utterance",)
    al_dev = np.concatenate([expert_logits(expert, dev, m, seed=args.seed) for m in modes])
    tl_dev = np.concatenate([tl_dev] * len(modes))
    meta_dev = np.concatenate([dev.x[:, -3:]] * len(modes))
    y_dev = np.concatenate([dev.y] * len(modes))
    t_audio = fit_temperature(al_dev, y_dev)
    gbase = GateConfig(
        text_temperature=t_text,
        audio_temperature=t_audio,
        text_veto=args.text_veto,
        min_confidence=args.min_confidence,
        fitted_on={
            "text_temperature": "MELD dev (text, context, batch 1)",
            "audio_temperature_and_gate": "RAVDESS actors 17-18, clean + augmented, scripted "
            "text, each clip alone and relative to the actor's earlier clips",
        },
    )
    ht_dev = np.ones(len(y_dev), bool)
    # Paired natural text + emotional audio does not exist here. The gate also sees MELD dev
    # utterances (real words, with context) each paired with a RAVDESS dev clip of the same
    # label: the words and the voice of one emotion, independent given it. There the text is
    # informative, so the gate can learn how far audio may move real words.
    pair_rng = np.random.default_rng(args.seed + 7)
    by_label = {c: np.flatnonzero(y_dev == c) for c in range(len(labels))}
    keep = np.array([by_label[c].size > 0 for c in y_meld])
    pick = np.array([pair_rng.choice(by_label[c]) for c in y_meld[keep]])
    fit_t = np.concatenate([tl_dev, tl_meld[keep]])
    fit_a = np.concatenate([al_dev, al_dev[pick]])
    fit_m = np.concatenate([meta_dev, meta_dev[pick]])
    fit_y = np.concatenate([y_dev, y_meld[keep]])
    gate = fit_gate(fit_t, np.ones(len(fit_y), bool), fit_a, fit_m, fit_y, gbase)
    report["gate_fit_rows"] = {
        "ravdess_17-18_scripted": int(len(y_dev)),
        "meld_dev_paired": int(keep.sum()),
    }
    _log(
        f"temperatures: text {t_text:.3f}, audio {t_audio:.3f}; gate alpha_max {gate.alpha_max:.3f}"
    )
    report["gate"] = gate.to_dict()
    # dev figures of the fused answer (what the gate was fitted on: not a test figure)
    fd, _ = fuse(
        torch.from_numpy(tl_dev),
        torch.from_numpy(ht_dev),
        torch.from_numpy(al_dev),
        torch.ones(len(y_dev), dtype=torch.bool),
        torch.from_numpy(meta_dev),
        gate,
    )
    report["dev_fused_ravdess_17-18"] = score(y_dev, fd.numpy().argmax(1), labels)
    report["dev_audio_only_ravdess_17-18"] = score(y_dev, al_dev.argmax(1), labels)
    _log(
        f"dev (RAVDESS 17-18, both readings): fused {report['dev_fused_ravdess_17-18']['accuracy']:.2f} %, "
        f"audio alone {report['dev_audio_only_ravdess_17-18']['accuracy']:.2f} %"
    )
    report["dev_ece_meld"] = round(
        100
        * expected_calibration_error(
            torch.softmax(torch.from_numpy(tl_meld) / t_text, -1).numpy(), y_meld
        ),
        2,
    )

    # 6. the checkpoint folder
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in base_ckpt.iterdir():
        if f.is_file() and f.name not in ("__init__.py",):
            shutil.copy2(f, out / f.name)
    save_expert(expert, out, {"trained_on": list(cfg.trained_on), "settings": settings})
    save_gate(gate, out)
    report["seconds"] = round(time.time() - t0, 1)
    (out / "audio_expert_report.json").write_text(json.dumps(report, indent=2) + "\n")
    _log(f"wrote {out} [{time.time() - t0:.0f} s]")
    return 0
