"""Static int8 CAM++ in ONNX Runtime: how much cheaper, and what it costs the speaker turns.

Turn detection is most of the CPU under load (``bench_pipeline.py --cpu-by-thread``), and CAM++
most of that. This benchmark quantises the exported CAM++ graph (the pipeline's own ONNX file
in the user cache) with ONNX Runtime's static QDQ quantisation: per-channel int8 weights,
uint8 activations, MinMax ranges calibrated on TESS clips through the telephone line of
``bench_turns.py`` (another corpus than the test windows and the dev conversations). Only
convolutions are quantised; ``FIRST:LAST`` keeps that many of the first and last convolutions
in fp32. Per variant it prints the time per 0.6 s and 1.2 s window (one thread, median of 40),
the cosine of its embeddings to the fp32 ones on held-out windows (RAVDESS actors 20-24 through
the telephone line, and the shipped call), and with ``--turns`` the speaker agreement of
``bench_turns.py``'s detector over its synthetic conversations with this CAM++. Nothing here
changes what the pipeline runs. Usage:

    .venv/bin/python benchmarks/bench_campp_int8.py --tess ../shared/data/tess \
        --ravdess ../shared/data/ravdess [--variants 4:8 12:8 4:30] [--turns] [--conversations 16]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
CALL = ROOT / "tests" / "data" / "phone-call-2spk.wav"
SR = 16_000


def fp32_model() -> Path:
    """The pipeline's exported CAM++ graph (exported now if the cache has none)."""
    from emomon.model.cache import default_cache_dir
    from emomon.streamer.stages import shared_embedder

    shared_embedder("auto")
    found = sorted((default_cache_dir() / "onnx").glob("campplus-*.onnx"))
    if not found:
        raise SystemExit("no exported CAM++ graph in the cache (ONNX Runtime unavailable?)")
    return found[-1]


def windows(files: list[Path], seconds: float, per_file: int) -> list[np.ndarray]:
    from bench_turns import telephone

    from emomon.model.audio import decode_audio

    n, out = int(seconds * SR), []
    for f in files:
        x = telephone(decode_audio(str(f)))
        for k in range(per_file):
            s = int(0.3 * SR) + k * n
            if s + n <= x.shape[0]:
                out.append(x[s : s + n].astype(np.float32))
    return out


def session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def quantise(fp32: Path, out: Path, calibration: list[np.ndarray], keep: tuple[int, int]) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    # ONNX Runtime's pre-processing writes temporary files (an inferred graph, its external
    # weights) into the working folder: keep them beside the output, not in the checkout
    with contextlib.chdir(out.parent):
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
    first, last = keep
    excluded = convs[:first] + (convs[-last:] if last else [])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict | None:  # type: ignore[type-arg]
            x = next(self.items, None)
            return None if x is None else {"x": x}

    with contextlib.chdir(out.parent):
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=excluded,
        )


def ms_per_window(sess, feats: np.ndarray, repeats: int = 40) -> float:  # type: ignore[no-untyped-def]
    for _ in range(5):
        sess.run(None, {"x": feats})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"x": feats})
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def embeddings(sess, feats: list[np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    e = np.concatenate([sess.run(None, {"x": f})[0] for f in feats])
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def agreement(model: Path | None, ravdess: Path, conversations: int) -> float:
    """bench_turns' mean agreement over its synthetic conversations, CAM++ from ``model``
    (None: the pipeline's own)."""
    import bench_turns
    import torch

    import emomon.streamer.shared_models as sm
    import emomon.streamer.stages as stages

    original = sm.onnx_forward

    def forward(net, example, name, weights, axes) -> Callable[[torch.Tensor], torch.Tensor]:  # type: ignore[no-untyped-def]
        if name != "campplus" or model is None:
            return original(net, example, name, weights, axes)
        sess = session(model)
        return lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])

    sm.onnx_forward = forward
    stages.shared_embedder.cache_clear()  # the next detector builds its CAM++ with this model
    try:
        with tempfile.TemporaryDirectory() as tmp:
            items = []
            for i, (x, turns) in enumerate(bench_turns.conversations(ravdess, conversations)):
                p = Path(tmp) / f"conv{i:02d}.wav"
                bench_turns.write_wav(p, x)
                items.append((p, turns))
            return bench_turns.score(items, {})[0]
    finally:
        sm.onnx_forward = original
        stages.shared_embedder.cache_clear()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tess", type=Path, required=True, help="TESS folder (calibration)")
    ap.add_argument("--ravdess", type=Path, required=True, help="RAVDESS folder (tests)")
    ap.add_argument("--variants", nargs="+", default=["4:8"], metavar="FIRST:LAST")
    ap.add_argument("--turns", action="store_true", help="also the agreement of bench_turns")
    ap.add_argument("--conversations", type=int, default=16)
    args = ap.parse_args()
    from emomon.model.audio import decode_audio
    from emomon.streamer.config import set_torch_threads
    from emomon.streamer.speakers.embedding import SpeakerEmbedder

    set_torch_threads(1)
    keeps = []
    for v in args.variants:
        try:
            a, b = (int(p) for p in v.split(":"))
        except ValueError:
            raise SystemExit(f"--variants: {v!r} is not FIRST:LAST (two whole numbers)") from None
        keeps.append((a, b))
    fb = SpeakerEmbedder._fbank
    tess = sorted(p for p in args.tess.rglob("*") if p.suffix in (".wav", ".flac"))[::20]
    cal = [fb(w).numpy()[None] for w in windows(tess, 0.6, 1) + windows(tess, 1.2, 1)]
    held = sorted(p for a in range(20, 25) for p in (args.ravdess / f"Actor_{a:02d}").glob("*"))
    call = decode_audio(str(CALL))
    tests = windows(held[::12], 0.6, 2) + windows(held[::12], 1.2, 1)
    tests += [call[int(s * SR) : int((s + 1.2) * SR)] for s in np.arange(6.0, 28.0, 0.5)]
    feats = [fb(w).numpy()[None] for w in tests]
    short = fb(tests[0]).numpy()[None]
    long = next(f for f in feats if f.shape[1] > short.shape[1])
    fp32 = fp32_model()
    ref = session(fp32)
    base = embeddings(ref, feats)
    print(
        f"calibration: {len(cal)} TESS windows; held out: {len(tests)} windows "
        f"(RAVDESS 20-24, the call)\n"
    )
    print(
        f"{'variant':<22} {'0.6 s ms':>8} {'1.2 s ms':>8} {'cos mean':>8} {'p5':>6} {'min':>6}",
        end="",
    )
    print(f" {'agreement':>9}" if args.turns else "")
    rows: list[tuple[str, Path | None]] = [("fp32 (the pipeline's)", None)]
    with tempfile.TemporaryDirectory() as tmp:
        for first, last in keeps:
            out = Path(tmp) / f"campp-int8-{first}-{last}.onnx"
            quantise(fp32, out, cal, (first, last))
            rows.append((f"int8, fp32 convs {first}:{last}", out))
        for name, path in rows:
            sess = ref if path is None else session(path)
            cos = (embeddings(sess, feats) * base).sum(1)
            line = (
                f"{name:<22} {ms_per_window(sess, short):8.1f} {ms_per_window(sess, long):8.1f} "
                f"{cos.mean():8.4f} {np.percentile(cos, 5):6.3f} {cos.min():6.3f}"
            )
            if args.turns:
                line += f" {agreement(path, args.ravdess, args.conversations):9.3f}"
            print(line, flush=True)
    print(f"\nfp32 timed again (the machine's drift): {ms_per_window(ref, short):.1f} ms per 0.6 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
