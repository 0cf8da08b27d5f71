"""Scoring helpers for end-to-end tests: speaker-turn agreement with an RTTM, word error rate."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path


def read_rttm(path: Path) -> list[tuple[float, float, str]]:
    turns = []
    for line in path.read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append((float(f[3]), float(f[3]) + float(f[4]), f[7]))
    return turns


def read_stm_words(path: Path) -> list[str]:
    words: list[str] = []
    for line in path.read_text().splitlines():
        f = line.split(maxsplit=5)
        if len(f) >= 6:
            words += normalise(f[5])
    return words


def normalise(text: str) -> list[str]:
    text = text.lower().replace("’", "'")
    return re.findall(r"[a-z0-9']+", text)


def wer(ref: Sequence[str], hyp: Sequence[str]) -> float:
    """Word error rate: Levenshtein distance over words / reference length."""
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
            prev, d[j] = d[j], cur
    return d[len(hyp)] / max(1, len(ref))


def speaker_agreement(
    turns: Sequence[tuple[float, float, str]],
    hyp: Sequence[tuple[float, float, str]],
    step: float = 0.01,
) -> float:
    """Share of reference speech time (single-speaker parts) whose hypothesis label matches,
    under the best one-to-one mapping of hypothesis labels onto reference speakers."""
    ref_spk = sorted({s for _, _, s in turns})
    hyp_spk = sorted({s for _, _, s in hyp})
    end = max(e for _, e, _ in turns)
    n = int(end / step) + 1
    ref_at: list[str | None] = [None] * n
    for i in range(n):
        t = i * step
        who = {s for a, b, s in turns if a <= t < b}
        ref_at[i] = next(iter(who)) if len(who) == 1 else None
    hyp_at: list[str | None] = [None] * n
    for a, b, s in hyp:
        for i in range(int(a / step), min(n, int(b / step))):
            hyp_at[i] = s
    total = sum(1 for r in ref_at if r is not None)
    best = 0
    for perm in itertools.permutations(hyp_spk, min(len(hyp_spk), len(ref_spk))):
        mapping = dict(zip(perm, ref_spk, strict=False))
        ok = sum(
            1
            for r, h in zip(ref_at, hyp_at, strict=True)
            if r is not None and h is not None and mapping.get(h) == r
        )
        best = max(best, ok)
    return best / max(1, total)
