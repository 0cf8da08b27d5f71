"""Dataset loaders parse the official layouts; label mapping is one table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emomon.model.datasets import (
    LABEL_MAPS,
    MELD_LABELS,
    load_iemocap,
    load_manifest,
    load_meld,
    load_ravdess,
    load_tess,
    parse_actor_range,
    parse_ravdess_name,
    parse_tess_name,
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
    for table in LABEL_MAPS.values():
        assert set(table.values()) <= set(MELD_LABELS)


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
