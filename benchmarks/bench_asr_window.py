"""Whisper encoder window policy: transcription cost and word error rate per policy.

Whisper's encoder always sees a window; faster-whisper pads every utterance to 30 s, and on a
CPU that padding is most of the cost of a short utterance. ``asr.encoder_window`` gives the
encoder max(MIN, speech + MARGIN) seconds instead (``streamer/transcriber.py``). This prints,
per policy, the WER and the time per utterance (mean / p95, one utterance at a time, as the
pipeline runs them, with ``--threads`` CTranslate2 threads each) and how often the loop guard re-decoded at 30 s, on:

* the shipped phone call, cut at its reference (STM) utterance times ± 0.2 s;
* RAVDESS clips (two scripted sentences) and TESS clips ("Say the word ..."), a seeded sample,
  when their folders are given (development data, not shipped).

Usage:

    .venv/bin/python benchmarks/bench_asr_window.py [--windows full 10+8 8+6] \
        [--threads 1 2 0] [--ravdess ../shared/data/ravdess --tess ../shared/data/tess --n 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CALL = ROOT / "tests" / "data" / "phone-call-2spk.wav"

RAVDESS_TEXT = {"01": "kids are talking by the door", "02": "dogs are sitting by the door"}


def items(ravdess: Path | None, tess: Path | None, n: int) -> list[tuple[str, np.ndarray, str]]:
    from emomon.model.audio import decode_audio

    out = []
    call = decode_audio(CALL)
    for line in CALL.with_suffix(".stm").read_text().splitlines():
        f = line.split(maxsplit=5)
        s, e = float(f[3]) - 0.2, float(f[4]) + 0.2
        out.append(("call", call[int(s * 16000) : int(e * 16000)], f[5]))
    rng = random.Random(0)
    if ravdess is not None:
        files = sorted(ravdess.glob("Actor_*/*.*"))
        rng.shuffle(files)
        for p in files[:n]:
            out.append(("ravdess", decode_audio(p), RAVDESS_TEXT[p.name.split("-")[4]]))
    if tess is not None:
        files = sorted(tess.rglob("*.flac")) + sorted(tess.rglob("*.wav"))
        rng.shuffle(files)
        for p in files[:n]:
            word = p.stem.split("_")[1]
            out.append(("tess", decode_audio(p), f"say the word {word}"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--windows", nargs="+", default=["full", "10+8"])
    ap.add_argument("--ravdess", type=Path)
    ap.add_argument("--tess", type=Path)
    ap.add_argument("--n", type=int, default=100, help="clips per corpus")
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="CTranslate2 threads per transcription (asr.cpu_threads; 0 = its own default)",
    )
    ap.add_argument("--beams", type=int, nargs="+", default=[1], help="asr.beam_size values")
    args = ap.parse_args()

    from emomon.streamer.transcriber import Transcriber, TranscriberConfig
    from tests.helpers.scoring import normalise, wer

    data = items(args.ravdess, args.tess, args.n)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print("Whisper tiny.en int8 (shipped), one utterance at a time\n")
    print(
        f"{'window':<9} {'beam':>4} {'threads':>7} {'corpus':<8} {'utts':>5} {'WER':>6} "
        f"{'mean ms':>8} {'p95 ms':>7} loops"
    )
    configs = [(w, b, t) for w in args.windows for b in args.beams for t in args.threads]
    for window, beam, threads in configs:
        tr = Transcriber(
            TranscriberConfig(
                encoder_window=window, cpu_threads=threads, language="en", beam_size=beam
            )
        )
        tr.transcribe_sync(data[0][1])  # warm-up
        res: dict[str, list] = {}
        for corpus, audio, ref in data:
            out = tr.transcribe_sync(audio)
            r = res.setdefault(corpus, [[], [], [], 0])
            r[0] += normalise(ref)
            r[1] += normalise(out.text)
            r[2].append(out.seconds * 1000)
            r[3] += out.fallback
        for corpus, (ref, hyp, ms, loops) in res.items():
            print(
                f"{window:<9} {beam:>4} {threads:>7} {corpus:<8} {len(ms):5d} {wer(ref, hyp):6.3f} {np.mean(ms):8.0f} "
                f"{np.percentile(ms, 95):7.0f} {loops}",
                flush=True,
            )
        tr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
