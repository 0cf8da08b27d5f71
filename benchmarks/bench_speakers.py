"""Cost and quality of speaker attribution on the shipped phone call (no ASR, no fusion).

Part 1: CAM++ milliseconds per call (one 0.5 s window, the TorchScript graph) with 1 and 2
PyTorch intra-op threads, called from the main thread and from a worker thread, as the pipeline
calls it; then per window of the detector's two lengths, alone and four per pass, one thread, in
ONNX Runtime (as the pipeline runs it), traced TorchScript (``speakers.runtime=torch``) and
eager; then the segmentation network (frame-level turns) per window of 1, 2 and 3 s, alone and
four per pass, in the same three forms.
Part 2: VAD + turn detection over the call, as fast as it decodes, per detector setting:
wall time, number of segments, agreement with the RTTM, and how long after a turn change
(or end of speech) each segment was closed (p50/p95, stream time). Usage:

    .venv/bin/python benchmarks/bench_speakers.py [--settings '{"segmentation": false}' '{}']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
CALL = ROOT / "tests" / "data" / "phone-call-2spk.wav"


def embed_cost(repeats: int = 60) -> None:
    import torch

    from emomon.streamer.stages import shared_embedder

    emb = shared_embedder("torch")
    x = [np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)]

    async def from_thread() -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            await asyncio.to_thread(emb.embed, x)
        return (time.perf_counter() - t0) / repeats

    for threads in (2, 1):
        torch.set_num_threads(threads)
        emb.embed(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            emb.embed(x)
        main = (time.perf_counter() - t0) / repeats
        worker = asyncio.run(from_thread())
        print(
            f"CAM++ 0.5 s window, {threads} torch thread(s): main thread {main * 1000:.1f} ms, "
            f"worker thread {worker * 1000:.1f} ms per call"
        )
    # Sessions asking at the same moment share one forward pass (SpeakerEmbedder.embed); the
    # pipeline's embedder runs in ONNX Runtime, TorchScript and the eager network beside it.
    from emomon.streamer.speakers import SpeakerEmbedder

    w = [np.random.default_rng(i).normal(0, 0.1, 9600).astype(np.float32) for i in range(4)]
    torch.set_num_threads(1)  # as the pipeline runs it (ONNX Runtime takes it at load)
    for e in (SpeakerEmbedder(), emb, SpeakerEmbedder(jit=False)):
        for win_s in (0.6, 1.2):
            n = int(win_s * 16000)
            for batch in (1, 4):
                per = per_window(e.embed, [np.resize(a, n) for a in w[:batch]], repeats // 4)
                print(
                    f"CAM++ {e.runtime}, {win_s} s windows, 1 thread, "
                    f"{batch} per pass: {per * 1000:.1f} ms per window"
                )


def per_window(run, windows: list, calls: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per window of ``run(windows)`` (one warm-up call, then ``calls`` timed)."""
    run(windows)
    t0 = time.perf_counter()
    for _ in range(calls):
        run(windows)
    return (time.perf_counter() - t0) / calls / len(windows)


def segmentation_cost(repeats: int = 40) -> None:
    import torch

    from emomon.streamer.segmentation import SpeakerSegmentation

    torch.set_num_threads(1)
    w = [np.random.default_rng(i).normal(0, 0.1, 48000).astype(np.float32) for i in range(4)]
    for seg in (
        SpeakerSegmentation(),
        SpeakerSegmentation(runtime="torch"),
        SpeakerSegmentation(jit=False),
    ):
        for win_s in (1.0, 2.0, 3.0):
            n = int(win_s * 16000)
            for batch in (1, 4):
                per = per_window(seg.frames, [a[:n] for a in w[:batch]], repeats // 4)
                print(
                    f"segmentation {seg.runtime}, {win_s} s windows, 1 thread, "
                    f"{batch} per pass: {per * 1000:.1f} ms per window"
                )


def turns(over: dict) -> str:
    from bench_turns import detect

    from tests.helpers.scoring import read_rttm, speaker_agreement

    out, wall = asyncio.run(detect(CALL, over))
    agree = speaker_agreement(
        read_rttm(CALL.with_suffix(".rttm")), [(a, b, w) for a, b, w, _ in out]
    )
    late = [h for *_, h in out]
    return (
        f"{json.dumps(over):<40} {wall:6.1f} s {len(out):5d}  {agree:6.3f}  "
        f"{np.percentile(late, 50):5.2f} / {np.percentile(late, 95):5.2f} s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--settings",
        nargs="+",
        default=['{"segmentation": false}', "{}"],
        help="speakers.* overrides as JSON, one detector setting each",
    )
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs\n")
    embed_cost()
    from emomon.streamer.config import set_torch_threads

    set_torch_threads(1)
    segmentation_cost()
    print(
        f"\n{'speakers.* overrides':<40} {'wall':>8} {'segs':>5}  {'agree':>6}  closed after change p50 / p95"
    )
    for item in args.settings:
        print(turns(json.loads(item)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
