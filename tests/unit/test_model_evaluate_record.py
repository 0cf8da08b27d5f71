"""`emomon evaluate --out-json` says what was evaluated: data, folders, split, label set,
modalities and whether context was really read (issue #14, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emomon.model.checkpoint import save_checkpoint
from emomon.model.cli import evaluate_main
from emomon.model.features import TextFrontEnd
from emomon.model.testing import make_tiny_text_encoder, tiny_config
from emomon.model.train import build_net


def test_evaluate_json_records_what_was_evaluated(tmp_path: Path) -> None:
    enc = make_tiny_text_encoder(tmp_path / "bert")
    cfg = tiny_config(enc, modalities=("text",), context_turns=2)
    torch.manual_seed(0)
    save_checkpoint(build_net(cfg, TextFrontEnd(cfg)).eval(), tmp_path / "ck")
    turns = [("hi", "neutral"), ("great!", "joy"), ("ok", "neutral")] * 2
    rows = (
        [  # two dialogues of the test split, two classes present; context: a JSON list
            {
                "text": t,
                "label": lab,
                "dialogue": f"d{i // 3}",
                "speaker": "ab"[i % 2],
                "split": "test",
                "context": json.dumps([p for p, _ in turns[i - i % 3 : i]]),
            }
            for i, (t, lab) in enumerate(turns)
        ]
        + [{"text": "later", "label": "joy", "split": "train"}]
    )
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "rep.json"
    argv = ["--checkpoint", str(tmp_path / "ck"), "--data", "manifest", "--manifest", str(m)]
    argv += ["--cache-dir", str(tmp_path / "c"), "--out-json", str(out)]
    assert evaluate_main(argv) == 0
    rep = json.loads(out.read_text())
    assert rep["n"] == 6 and rep["data"] == "manifest"
    assert rep["data_folders"] == {"manifest": str(m.resolve())}
    assert rep["split"] == "rows with split=test"
    assert rep["label_set"]["name"] == "meld7" and len(rep["label_set"]["labels"]) == 7
    assert rep["macro_f1_classes"] == ["neutral", "joy"]
    assert rep["modalities_requested"] == ["audio", "text"] and rep["model_modalities"] == ["text"]
    assert rep["modalities_used"] == {"text": 6, "audio": 0}
    assert rep["context"]["used"] is False  # this checkpoint has no context model
    # the text encoder read earlier turns for every utterance but each dialogue's first
    assert rep["text_context"] == {"turns": 2, "utterances_with_context": 4}
