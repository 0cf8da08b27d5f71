"""`emomon train-context` and `emomon evaluate --context on|off` end to end, on a tiny
checkpoint and a manifest with dialogues (the same code paths as MELD, in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from emomon.model.checkpoint import save_checkpoint
from emomon.model.cli import evaluate_main, train_context_main
from emomon.model.datasets import load_manifest, manifest_has_split
from emomon.model.features import TextFrontEnd
from emomon.model.testing import make_tiny_text_encoder, tiny_config
from emomon.model.train import build_net

WORDS = ["i am so happy", "you are sad", "no", "yes great", "what is the door", "hello"]
LABELS = ["joy", "sadness", "anger", "joy", "surprise", "neutral"]


def _manifest(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for d in range(30):
        split = "train" if d < 20 else ("dev" if d < 25 else "test")
        for t in range(4):
            k = int(rng.integers(len(WORDS)))
            rows.append(
                {
                    "id": f"d{d}u{t}",
                    "text": WORDS[k],
                    "label": LABELS[k],
                    "dialogue": f"d{d}",
                    "speaker": "ab"[t % 2],
                    "split": split,
                }
            )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_manifest_split_column(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "m.jsonl")
    assert manifest_has_split(m)
    assert len(load_manifest(m, split="dev")) == 20 and len(load_manifest(m)) == 120
    s = load_manifest(m, split="test")[1]
    assert s.dialogue == "d25" and s.speaker == "b"


def test_train_context_then_evaluate_with_and_without(tmp_path: Path) -> None:
    enc = make_tiny_text_encoder(tmp_path / "bert")
    cfg = tiny_config(enc)
    torch.manual_seed(0)
    save_checkpoint(build_net(cfg, TextFrontEnd(cfg)).eval(), tmp_path / "ck")
    m = _manifest(tmp_path / "m.jsonl")
    common = ["--data", "manifest", "--manifest", str(m), "--cache-dir", str(tmp_path / "c")]
    out = tmp_path / "ck-ctx"
    rc = train_context_main(
        ["--checkpoint", str(tmp_path / "ck"), "--out", str(out), "--epochs", "2"]
        + ["--members", "2", "--hidden", "8", "--turns", "3"]
        + common
    )
    assert rc == 0
    meta = json.loads((out / "context.json").read_text())
    assert meta["trained"]["n_train"] == 80 and meta["trained"]["n_dev"] == 20
    assert [h["seed"] for h in meta["trained"]["heads"]] == [1, 2]
    assert (out / "model.safetensors").read_bytes() == (
        tmp_path / "ck/model.safetensors"
    ).read_bytes()
    reports = {}
    for ctx in ("on", "off"):
        j = tmp_path / f"{ctx}.json"
        args = ["--checkpoint", str(out), "--context", ctx, "--out-json", str(j)]
        assert evaluate_main(args + common) == 0
        reports[ctx] = json.loads(j.read_text())
    on, off = reports["on"]["context"], reports["off"]["context"]
    assert reports["on"]["n"] == 20  # the test rows
    assert on == {"used": True, "utterances_with_history": 15, "turns": 3}
    assert off["used"] is False and off["utterances_with_history"] == 0
    # the same checkpoint folder must not be both source and target
    assert train_context_main(["--checkpoint", str(out), "--out", str(out)] + common) == 2
