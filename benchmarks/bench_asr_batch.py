"""Whisper batched across sessions: cost per utterance at batch 1 / 2 / 4 / 8 (issue 16.2).

When several sessions have utterances waiting, ``streamer/asr_batch.py`` encodes and decodes
them as one CTranslate2 batch per encoder-window length. This prints, per batch size, the wall
time per utterance (mean over the set, batches of consecutive utterances, one thread per call
as ``asr.cpu_threads`` 1), how many CTranslate2 groups a batch split into, and whether every
text equals the batch-1 text, on:

* the shipped phone call cut at its reference (STM) turns ± 0.2 s (13 utterances);
* RAVDESS / TESS clips (a seeded sample) when their folders are given.

Usage:

    .venv/bin/python benchmarks/bench_asr_batch.py [--sizes 1 2 4 8] [--repeat 2] \
        [--ravdess ../shared/data/ravdess --tess ../shared/data/tess --n 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_asr_window import items  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--window", default="10+8/-23", help="asr.encoder_window")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="asr.cpu_threads")
    ap.add_argument("--repeat", type=int, default=2, help="passes over the set per size")
    ap.add_argument("--ravdess", type=Path)
    ap.add_argument("--tess", type=Path)
    ap.add_argument("--n", type=int, default=32, help="clips per corpus")
    args = ap.parse_args()

    from emomon.streamer.transcriber import Transcriber, TranscriberConfig

    data = items(args.ravdess, args.tess, args.n)
    audios = [a for _, a, _ in data]
    tr = Transcriber(
        TranscriberConfig(
            encoder_window=args.window,
            cpu_threads=args.threads,
            beam_size=args.beam,
            language="en",  # the ASR alone; language detection is measured elsewhere
        )
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"Whisper tiny.en int8, window {args.window}, beam {args.beam}, {args.threads} thread(s), "
        f"{len(audios)} utterances ({', '.join(sorted({c for c, _, _ in data}))}), "
        f"mean {np.mean([a.size for a in audios]) / 16000:.1f} s\n"
    )
    tr.transcribe_batch_sync(audios[:2], [None, None])  # warm-up
    print(f"{'batch':>5} {'ms/utt':>7} {'vs 1':>6} {'groups/batch':>12} same text")
    base_ms = None
    base_texts = None
    for size in args.sizes:
        best = float("inf")
        texts: list[str] = []
        groups = []
        for _ in range(args.repeat):
            texts = []
            t0 = time.perf_counter()
            for i in range(0, len(audios), size):
                chunk = audios[i : i + size]
                texts += [t.text for t in tr.transcribe_batch_sync(chunk, [None] * len(chunk))]
                lengths = {max(10, int(np.ceil(a.size / 16000 + 8))) for a in chunk}
                groups.append(len(lengths))
            best = min(best, (time.perf_counter() - t0) / len(audios) * 1000)
        base_ms = base_ms or best
        base_texts = base_texts or texts
        same = sum(a == b for a, b in zip(texts, base_texts, strict=True))
        print(
            f"{size:5d} {best:7.0f} {best / base_ms:6.2f} {np.mean(groups):12.1f} "
            f"{same}/{len(texts)}",
            flush=True,
        )
    tr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
