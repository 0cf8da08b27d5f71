"""What dynamic int8 quantisation does to a text network: MELD dev W-F1 and encoder latency.

The question it answers (issue #14, item 4): a text network fine-tuned on a larger frozen
encoder (``emomon train --variant text_only --set text_encoder=all-mpnet-base-v2 ...``) is only
worth shipping if it keeps its dev score on the path users run (int8 on CPU, batch 1) within
the 30 ms budget. For each quantisation scheme of the frozen encoder (the trained layers are
always int8, as ``EmotionModel.load`` does) it prints MELD dev accuracy / W-F1, each utterance
alone at batch 1, and the encoder's median batch-1 time on one thread:

* ``fp32``: no quantisation;
* ``int8``: every ``nn.Linear`` (what ``EmotionModel.load(quantize="auto")`` does on a CPU);
* ``int8-per-channel``: the same with one weight scale per output channel;
* ``int8-ffn-fp32``: int8 except each layer's feed-forward output projection (``output.dense``).

Usage (development data; see docs/DATA.md):

    .venv/bin/python benchmarks/bench_text_int8.py --checkpoint RUN/best --meld-dir ../shared/data/meld
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_text_encoders import TEXTS  # noqa: E402 - the same three utterances are timed

SCHEMES = ("fp32", "int8", "int8-per-channel", "int8-ffn-fp32")


def quantized(encoder, scheme: str):  # noqa: ANN001, ANN201 - torch modules
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if scheme == "fp32":
        return encoder
    enc = copy.deepcopy(encoder)
    linear = {
        n
        for n, m in enc.named_modules()
        if isinstance(m, torch.nn.Linear)
        and not (
            scheme == "int8-ffn-fp32"
            and n.endswith(".output.dense")
            and not n.endswith("attention.output.dense")  # BERT's attention projection
        )
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if scheme == "int8-per-channel":
            return quantize_dynamic(enc, {n: per_channel_dynamic_qconfig for n in linear})
        return quantize_dynamic(enc, linear, dtype=torch.qint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a trained checkpoint folder")
    ap.add_argument("--meld-dir", required=True, help="folder with MELD's *_sent_emo.csv")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if args.repeats < 4:
        ap.error("--repeats must be at least 4 (the first three rounds are warm-up)")

    import torch
    from sklearn.metrics import f1_score
    from torch.ao.quantization import quantize_dynamic

    from emomon.model.datasets import load_meld
    from emomon.model.evaluation import text_logits
    from emomon.model.inference import EmotionModel

    base = EmotionModel.load(args.checkpoint, quantize="none", context=False)
    if base.text_fe is None:
        print("this checkpoint reads no text", file=sys.stderr)
        return 2
    fp32_encoder = base.text_fe.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base.net = quantize_dynamic(base.net, {torch.nn.Linear}, dtype=torch.qint8)
    samples = load_meld(args.meld_dir, "dev", labels=base.labels)
    tag = base.text_fe.tag
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads for the dev pass; "
        f"{datetime.date.today()}; model {base.model_id}"
    )
    print(f"{'scheme':<18} {'dev acc':>8} {'dev W-F1':>9} {'encoder ms':>11}")
    for scheme in args.schemes:
        base.text_fe.model = quantized(fp32_encoder, scheme)
        base.text_fe.tag = f"{tag}|bench-{scheme}"
        with tempfile.TemporaryDirectory() as cache:
            lg, _, y, _ = text_logits(base, samples, cache, batch_size=1, context=False)
        pred = lg.argmax(1)
        acc = 100 * float((pred == y).mean())
        wf1 = 100 * float(f1_score(y, pred, average="weighted"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        times = []
        with torch.inference_mode():
            for _ in range(args.repeats):
                for t in TEXTS:
                    t0 = time.perf_counter()
                    base.text_fe.encode([t])
                    times.append(1000 * (time.perf_counter() - t0))
        torch.set_num_threads(threads)
        ms = statistics.median(times[len(TEXTS) * 3 :])
        print(f"{scheme:<18} {acc:8.2f} {wf1:9.2f} {ms:11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
