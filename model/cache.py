"""On-disk cache of frozen features (Whisper frames, text-encoder states).

Frozen encoders are the expensive part on a CPU; computing them once per file
and training small heads on the cache is what makes training here feasible.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    """Where emomon keeps derived files: ``$EMOMON_CACHE_DIR`` if set, else the user's cache
    folder (``$XDG_CACHE_HOME/emomon``, ``~/.cache/emomon`` on Linux; platformdirs elsewhere)."""
    override = os.environ.get("EMOMON_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir  # honours XDG_CACHE_HOME

    return Path(user_cache_dir("emomon", appauthor=False))


#: :func:`default_cache_dir` as the process started (the CLI's ``--cache-dir`` default).
DEFAULT_CACHE_DIR = default_cache_dir()


def file_key(path: str | Path, tag: str) -> str:
    """A stable key for one file's features: resolved path, size and the feature tag."""
    p = Path(path).resolve()
    h = hashlib.sha1(f"{tag}|{p}|{p.stat().st_size}".encode()).hexdigest()
    return h[:20]


def text_key(text: str, tag: str) -> str:
    """A stable key for one text's features."""
    return hashlib.sha1(f"{tag}|{text}".encode()).hexdigest()[:20]


class NpyCache:
    """A folder of ``.npy`` arrays addressed by key; writes are atomic (tmp + rename)."""

    def __init__(self, root: str | Path, namespace: str) -> None:
        self.root = Path(root) / namespace
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        return np.load(p) if p.is_file() else None

    def put(self, key: str, value: np.ndarray) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, value)
        tmp.replace(p)
