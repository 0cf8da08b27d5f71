"""Clip statistics for the audio expert: clean and augmented copies, cached, in parallel.

Each (clip, copy) is decoded, augmented (copy ≥ 1, seeded by the clip and the copy), passed
through the live path's Whisper-frame recipe and reduced to :func:`audio_expert.stats_row`.
Rows are cached on disk per recipe, so a second run, or a run with more copies, only computes
what is new. The encoder is the expensive part (~60 ms a clip on one core); ``workers``
processes share the clips.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .audio import decode_audio, load_whisper_model
from .audio_expert import EXPERT_RECIPE, ExpertData, stats_row
from .augment import augment
from .cache import NpyCache, file_key
from .datasets import Sample

_MODEL: Any = None


def _key(path: Path, recipe: str, copy: int, gain_db: float) -> str:
    return file_key(path, f"expert-stats|{recipe}|copy{copy}|gain{gain_db:g}")


def _seed(path: Path, copy: int) -> int:
    return int(hashlib.sha1(f"{path.name}|{copy}".encode()).hexdigest()[:8], 16)


def level_variant(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """``audio`` played ``gain_db`` louder (or quieter), clipped to [-1, 1]."""
    return np.clip(audio * np.float32(10 ** (gain_db / 20)), -1, 1).astype(np.float32)


def peak_normalize(audio: np.ndarray, peak_dbfs: float = -1.0) -> np.ndarray:
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak <= 0:
        return audio
    return (audio * np.float32(10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


#: gain codes for evaluation variants: 0 dB = original; 99 = peak-normalised to -1 dBFS;
#: 79 = peak-normalised then attenuated by 20 dB
PEAK = 99.0
PEAK_MINUS_20 = 79.0
SAMPLE_MIN = 1600  # 0.1 s: shorter clips have no statistics


def _compute(job: tuple[str, str, int, float, str]) -> tuple[str, np.ndarray | None]:
    global _MODEL
    path, recipe, copy, gain_db, cache_dir = job
    if _MODEL is None:
        _MODEL = load_whisper_model(cpu_threads=1)
    audio = decode_audio(path)
    if audio.size < SAMPLE_MIN:
        return path, None
    if gain_db == PEAK:
        audio = peak_normalize(audio)
    elif gain_db == PEAK_MINUS_20:
        audio = level_variant(peak_normalize(audio), -20.0)
    elif gain_db:
        audio = level_variant(audio, gain_db)
    if copy > 0:
        audio = augment(audio, np.random.default_rng(_seed(Path(path), copy)))
    row = stats_row(_MODEL, audio, recipe)
    NpyCache(cache_dir, "expert-stats").put(_key(Path(path), recipe, copy, gain_db), row)
    return path, row


def build(
    samples: Sequence[Sample],
    labels: Sequence[str],
    cache_dir: str | Path,
    copies: int = 0,
    recipe: str = EXPERT_RECIPE,
    workers: int = 2,
    gain_db: float = 0.0,
    progress: bool = True,
) -> ExpertData:
    """Rows for every sample × copies 0..``copies`` (0 = clean)."""
    from tqdm import tqdm

    cache = NpyCache(cache_dir, "expert-stats")
    jobs = []
    for s in samples:
        assert s.audio_path is not None
        for c in range(copies + 1):
            if not cache.path(_key(s.audio_path, recipe, c, gain_db)).is_file():
                jobs.append((str(s.audio_path), recipe, c, gain_db, str(cache_dir)))
    if jobs:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in tqdm(
                    pool.map(_compute, jobs, chunksize=8),
                    total=len(jobs),
                    desc="audio statistics",
                    disable=not progress,
                ):
                    pass
        else:
            for j in tqdm(jobs, desc="audio statistics", disable=not progress):
                _compute(j)
    index = {lab: i for i, lab in enumerate(labels)}
    xs, ys, spk, clip, cp = [], [], [], [], []
    for s in samples:
        for c in range(copies + 1):
            row = cache.get(_key(s.audio_path, recipe, c, gain_db))  # type: ignore[arg-type]
            if row is None:
                continue
            xs.append(row)
            ys.append(index[s.label])
            spk.append(f"{s.dataset}/{s.group}")
            clip.append(s.uid)
            cp.append(c)
    if not xs:
        return ExpertData(
            np.zeros((0, 771), np.float32),
            np.zeros(0, int),
            np.zeros(0, str),
            np.zeros(0, str),
            np.zeros(0, int),
        )
    return ExpertData(
        np.stack(xs).astype(np.float32), np.array(ys), np.array(spk), np.array(clip), np.array(cp)
    )
