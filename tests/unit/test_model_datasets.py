"""Dataset loaders parse the official layouts; label mapping is one table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emomon.model.datasets import (
    IEMOCAP6_LABELS,
    LABEL_MAPS,
    LABEL_SETS,
    MELD_LABELS,
    load_iemocap,
    load_manifest,
    load_meld,
    load_ravdess,
    load_tess,
    parse_actor_range,
    parse_ravdess_name,
    parse_tess_name,
    split_dialogues,
)
from emomon.model.errors import DatasetError

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "iemocap_fixture"


def test_iemocap_fixture_layout() -> None:
    samples = load_iemocap(FIXTURE, sessions=[1], context_turns=2)
    by_id = {s.uid: s for s in samples}
    assert set(by_id) == {
        "iemocap/Ses01F_impro01_F000",
        "iemocap/Ses01F_impro01_M000",
        "iemocap/Ses01F_impro01_M001",
    }
    f0, m0, m1 = (by_id[f"iemocap/Ses01F_impro01_{k}"] for k in ("F000", "M000", "M001"))
    assert (f0.label, m0.label, m1.label) == ("neutral", "anger", "joy")  # fru dropped, exc → joy
    assert f0.text == "Excuse me." and m0.text == "Do you have your forms?"
    assert f0.audio_path is not None and f0.audio_path.is_file() and m1.audio_path is None
    assert m1.context == (
        "Do you have your forms?",
        "Yeah, I have them.",
    )  # causal, includes dropped turns
    assert f0.group == "Session1"


def test_iemocap_fixture_audio_decodes() -> None:
    from emomon.model.audio import decode_audio

    s = load_iemocap(FIXTURE, sessions=[1])[0]
    audio = decode_audio(s.audio_path)
    assert audio.dtype == np.float32 and audio.shape == (4000,) and 0.2 < np.abs(audio).max() <= 1.0


def test_iemocap_missing_layout_raises(tmp_path) -> None:
    with pytest.raises(DatasetError, match="EmoEvaluation"):
        load_iemocap(tmp_path)


def test_ravdess_and_tess_names(tmp_path) -> None:
    assert parse_ravdess_name("03-01-06-02-01-02-19") == {
        "modality": "03",
        "vocal": "01",
        "emotion": "06",
        "intensity": "02",
        "statement": "01",
        "repetition": "02",
        "actor": "19",
    }
    assert parse_ravdess_name("hello") is None
    assert parse_tess_name("OAF_back_fear") == ("OAF", "back", "fear")
    assert parse_tess_name("102testOAF_merge_ps11") == ("OAF", "merge", "ps")
    assert parse_tess_name("751testOA_bite_neutral48") is None  # misnamed in the copy here: skipped
    assert parse_tess_name("YAF_read_pleasant_surprise") == ("YAF", "read", "pleasant_surprise")
    for name in (
        "03-01-02-01-01-01-01.wav",
        "03-01-08-01-02-01-20.wav",
        "03-02-03-01-01-01-01.wav",
        "notes.txt",
    ):
        d = tmp_path / "rav" / "Actor_x"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"")
    rav = load_ravdess(tmp_path / "rav")
    assert [(s.label, s.group) for s in rav] == [
        ("neutral", "actor01"),
        ("surprise", "actor20"),
    ]  # calm→neutral; song skipped
    assert [s.label for s in load_ravdess(tmp_path / "rav", actors=parse_actor_range("19-24"))] == [
        "surprise"
    ]
    assert rav[0].text == "Kids are talking by the door."
    t = tmp_path / "tess" / "OAF_Pleasant_surprise"
    t.mkdir(parents=True)
    (t / "OAF_bean_ps.wav").write_bytes(b"")
    (tmp_path / "tess" / "5testYAF_gaze_happy3.wav").write_bytes(b"")
    tess = load_tess(tmp_path / "tess")
    assert sorted((s.label, s.group) for s in tess) == [("joy", "YAF"), ("surprise", "OAF")]


def test_label_mapping_is_a_table() -> None:
    assert LABEL_MAPS["ravdess"]["02"] == "neutral" and LABEL_MAPS["tess"]["ps"] == "surprise"
    for name, table in LABEL_MAPS.items():  # every row maps into one named label space
        space = IEMOCAP6_LABELS if name == "iemocap6" else MELD_LABELS
        assert set(table.values()) <= set(space) and space in LABEL_SETS.values()


def test_meld_csv(tmp_path) -> None:
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    rows = [
        '1,"Oh, you’re kidding!",Ross,surprise,positive,3,1,1,1,"00:01:00,000","00:01:01,000"',
        '2,Hi.,Rachel,neutral,neutral,3,0,1,1,"00:00:58,000","00:00:59,000"',
        '3,I hate this.,Ross,anger,negative,4,0,1,1,"00:02:00,000","00:02:01,000"',
    ]
    (tmp_path / "test_sent_emo.csv").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "raw" / "output_repeated_splits_test").mkdir(parents=True)
    (tmp_path / "raw" / "output_repeated_splits_test" / "dia3_utt1.mp4").write_bytes(b"")
    s = load_meld(tmp_path, "test", audio_dir=tmp_path / "raw", context_turns=3)
    assert [x.uid for x in s] == [
        "meld/test/dia3_utt0",
        "meld/test/dia3_utt1",
        "meld/test/dia4_utt0",
    ]
    assert (
        s[1].text == "Oh, you're kidding!" and s[1].label == "surprise" and s[1].context == ("Hi.",)
    )
    assert s[1].audio_path is not None and s[0].audio_path is None and s[2].context == ()
    with pytest.raises(DatasetError):
        load_meld(tmp_path, "train")


def test_manifest_jsonl_and_csv(tmp_path) -> None:
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"text": "yay", "audio": "a.wav", "label": "joy"})
        + "\n"
        + json.dumps({"text": "", "label": "fear"})
        + "\n"
    )
    m = load_manifest(tmp_path / "m.jsonl")
    assert m[0].audio_path == tmp_path / "a.wav" and m[0].label == "joy" and m[1].text is None
    (tmp_path / "m.csv").write_text("id,text,audio,label\nu1,hello,,neutral\n")
    c = load_manifest(tmp_path / "m.csv")
    assert c[0].uid == "u1" and c[0].audio_path is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x", "label": "bored"}) + "\n")
    with pytest.raises(DatasetError, match="not in"):
        load_manifest(tmp_path / "bad.jsonl")


# ------------------------------------------------------------ IEMOCAP: label sets, splits
_IEMOCAP_TURNS = (  # (turn suffix, IEMOCAP label, words); each dialogue: F000, M000, F001, …
    ("F000", "neu", "Hello there."),
    ("M000", "xxx", "Hmm, I am not sure."),  # no agreement: dropped from every label set
    ("F001", "fru", "This again?"),  # IEMOCAP-6 only
    ("M001", "exc", "Oh yes, finally!"),
    ("F002", "sur", "Really?"),  # MELD-7 only (surprise)
)


def _fake_iemocap(
    root: Path, sessions: tuple[int, ...] = (1, 2, 3, 4, 5), dialogues: int = 5
) -> Path:
    """An IEMOCAP_full_release tree in the official layout: EmoEvaluation + transcriptions."""
    rel = root / "IEMOCAP_full_release"
    for n in sessions:
        base = rel / f"Session{n}" / "dialog"
        (base / "EmoEvaluation").mkdir(parents=True)
        (base / "transcriptions").mkdir(parents=True)
        for d in range(dialogues):
            dialog = f"Ses0{n}F_impro0{d + 1}"
            emo = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            trans = []
            for k, (suffix, raw, words) in enumerate(_IEMOCAP_TURNS):
                t0, t1 = 2.0 * k + 1.0, 2.0 * k + 2.5
                emo += [f"[{t0:.4f} - {t1:.4f}]\t{dialog}_{suffix}\t{raw}\t[2.5, 2.5, 2.5]", ""]
                trans.append(f"{dialog}_{suffix} [{t0:08.4f}-{t1:08.4f}]: {words}")
            (base / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(emo) + "\n")
            (base / "transcriptions" / f"{dialog}.txt").write_text("\n".join(trans) + "\n")
    return root


def test_iemocap_six_classes_are_their_own_label_space(tmp_path: Path) -> None:
    root = _fake_iemocap(tmp_path, sessions=(1,), dialogues=1)
    six = load_iemocap(root, [1], labels=IEMOCAP6_LABELS, context_turns=3)
    assert [s.label for s in six] == ["neutral", "frustrated", "excited"]  # xxx, sur dropped
    meld = load_iemocap(root, [1], context_turns=3)  # default: onto the MELD classes
    assert [s.label for s in meld] == ["neutral", "joy", "surprise"]  # fru dropped, exc → joy
    # dropped turns stay in the history of later ones, as a live session hears them
    assert six[1].context == ("Hello there.", "Hmm, I am not sure.")
    assert meld[1].context == ("Hello there.", "Hmm, I am not sure.", "This again?")
    assert six[2].context == meld[1].context and six[2].dialogue == "iemocap/Ses01F_impro01"


def test_meld_context_keeps_turns_of_labels_outside_the_label_space(tmp_path: Path) -> None:
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
    rows = [
        "1,Hi.,A,neutral,neutral,0,0",
        "2,Eww.,B,disgust,negative,0,1",
        "3,Wow!,A,joy,positive,0,2",
    ]
    (tmp_path / "dev_sent_emo.csv").write_text(header + "\n".join(rows) + "\n")
    s = load_meld(tmp_path, "dev", labels=("neutral", "joy"), context_turns=5)
    assert [x.label for x in s] == ["neutral", "joy"] and s[1].context == ("Hi.", "Eww.")


def test_split_dialogues_is_seeded_and_keeps_dialogues_whole(tmp_path: Path) -> None:
    samples = load_iemocap(_fake_iemocap(tmp_path, sessions=(1, 2), dialogues=10), [1, 2])
    kept, held = split_dialogues(samples, 0.1, seed=0)
    held_d = {s.dialogue for s in held}
    assert len(held_d) == 2 and not held_d & {s.dialogue for s in kept}
    assert len(kept) + len(held) == len(samples)
    assert [s.uid for s in split_dialogues(samples, 0.1, seed=0)[1]] == [s.uid for s in held]
    with pytest.raises(DatasetError):
        split_dialogues(samples, 1.5)


def test_cli_standard_iemocap_split_and_six_labels(tmp_path: Path) -> None:
    import argparse

    from emomon.model.cli_common import add_split_args as _split_args
    from emomon.model.cli_common import config_from_args as _config_from_args
    from emomon.model.cli_common import data_record
    from emomon.model.cli_common import load_samples as _load

    root = _fake_iemocap(tmp_path, dialogues=10)
    p = argparse.ArgumentParser()
    _split_args(p, train=True)
    args = p.parse_args(["--train-sessions", "1-4", "--iemocap-dev-fraction", "0.1"])
    args.iemocap_dir, args.iemocap_labels = str(root), "6"
    args.config_json, args.set, args.variant = None, None, "full"
    labels = _config_from_args(args).labels
    assert labels == IEMOCAP6_LABELS
    parts = {part: _load("iemocap", args, part, labels, 0) for part in ("train", "dev", "test")}
    dialogues = {k: {s.dialogue for s in v} for k, v in parts.items()}
    assert len(dialogues["train"]) == 36 and len(dialogues["dev"]) == 4
    assert not dialogues["train"] & dialogues["dev"]
    assert {s.group for s in parts["test"]} == {"Session5"}
    assert {s.group for s in parts["train"] + parts["dev"]} == {f"Session{i}" for i in range(1, 5)}
    rec = data_record(["iemocap"], args, "dev")
    assert rec["folders"]["iemocap"] == str(root.resolve())
    assert "only a seeded 0.1 of the dialogues" in rec["split"]["iemocap"]


def test_data_folders_come_from_flags_or_env(tmp_path: Path, monkeypatch) -> None:
    from emomon.model.data_dirs import data_dir

    for var in ("EMOMON_DATA_DIR", "EMOMON_MELD_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DatasetError) as err:
        data_dir("meld")
    assert "\n" not in str(err.value) and "--meld-dir" in str(err.value)
    monkeypatch.setenv("EMOMON_DATA_DIR", str(tmp_path))
    assert data_dir("meld") == tmp_path / "meld"
    monkeypatch.setenv("EMOMON_MELD_DIR", str(tmp_path / "m"))
    assert data_dir("meld") == tmp_path / "m" and data_dir("meld", "x") == Path("x")


def test_macro_f1_counts_only_present_classes() -> None:
    from emomon.model.metrics import classification_report

    y = np.array([0, 0, 1, 1])  # classes 2 … 6 absent
    rep = classification_report(y, np.array([0, 0, 1, 1]), MELD_LABELS)
    assert rep["macro_f1"] == 100.0 and rep["macro_f1_classes"] == ["neutral", "joy"]
    assert rep["per_class_f1"]["fear"] is None
    rep = classification_report(y, np.array([0, 0, 1, 6]), MELD_LABELS)  # a false "fear"
    assert rep["per_class_f1"]["fear"] == 0.0 and rep["macro_f1"] == pytest.approx(83.33, abs=0.01)


def test_help_shows_every_default(capsys) -> None:
    import re

    from emomon.model.cli import bench_main, evaluate_main, train_context_main, train_main

    for main in (train_main, evaluate_main, train_context_main, bench_main):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = capsys.readouterr().out
        blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1].split("\ndata folders:")[0])
        for block in blocks[1:]:
            if block.startswith("-h"):
                continue
            assert "(default:" in " ".join(block.split()), (main.__name__, block)
        assert main is bench_main or "audio-only row" in text  # the manifest format
