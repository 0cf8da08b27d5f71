"""On-disk cache of frozen features (Whisper frames, text-encoder states).

Frozen encoders are the expensive part on a CPU; computing them once per file
and training small heads on the cache is what makes training here feasible.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

DEFAULT_CACHE_DIR = Path(os.environ.get("EMOMON_CACHE_DIR", "/root/.cache/emomon"))


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
