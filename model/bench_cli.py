"""``emomon bench-model``: parameters, checkpoint size, CPU latency and throughput."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .cli_common import add_inference_args, describe, guarded


def configure(p: argparse.ArgumentParser) -> None:
    describe(p, __doc__)
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (None: the shipped one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls")
    p.add_argument(
        "--audio-s", type=float, default=3.0, help="utterance length for the audio input"
    )
    p.add_argument(
        "--raw-audio", action="store_true", help="give PCM instead of precomputed Whisper frames"
    )
    add_inference_args(p, "as EmotionModel.load")
    p.add_argument(
        "--history",
        type=int,
        default=8,
        help="earlier turns given to each utterance (the context model's input; 0 = none)",
    )
    p.add_argument("--out-json", default=None, help="also write the results (JSON) here")
    p.set_defaults(func=guarded(_bench))


def _bench(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .checkpoint import DEFAULT_CHECKPOINT
    from .inference import EmotionInput, EmotionModel

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = EmotionModel.load(args.checkpoint, device=args.device, quantize=args.quantize)
    load_s = time.perf_counter() - t0
    ck = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    size = sum(f.stat().st_size for f in ck.iterdir() if f.is_file())
    rng = np.random.default_rng(0)
    texts = [
        "I can't believe you did that!",
        "Okay, fine, whatever you say.",
        "Oh my God, that's amazing news!",
        "Please leave me alone right now.",
        "So what are we going to do about the apartment?",
    ]
    n_frames = int(args.audio_s * 50)

    def make(i: int) -> EmotionInput:
        if args.raw_audio:
            return EmotionInput(
                texts[i % len(texts)],
                audio=(0.1 * rng.standard_normal(int(args.audio_s * 16000))).astype(np.float32),
            )
        frames = rng.standard_normal((n_frames, model.cfg.whisper_dim)).astype(np.float32)
        return EmotionInput(
            texts[i % len(texts)],
            whisper_frames=frames if model.audio_frontend == "whisper" else None,
            audio=None
            if model.audio_frontend == "whisper"
            else (0.1 * rng.standard_normal(int(args.audio_s * 16000))).astype(np.float32),
        )

    history: tuple[Any, ...] = ()
    if model.context is not None and args.history > 0:
        from .context import ContextTurn

        mem = model.predict([make(0)])[0].memory
        assert mem is not None
        history = tuple(ContextTurn(mem, i % 2 == 0) for i in range(args.history))

    def with_history(x: EmotionInput) -> EmotionInput:
        return dataclasses.replace(x, history=history)

    one = [with_history(make(0))]
    many = [with_history(make(i)) for i in range(32)]
    for _ in range(5):
        model.predict(one)
    lat = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        model.predict(one)
        lat.append(time.perf_counter() - t)
    model.predict(many)
    reps = max(3, args.repeats // 5)
    t = time.perf_counter()
    for _ in range(reps):
        model.predict(many)
    thr = 32 * reps / (time.perf_counter() - t)
    trainable = model.param_counts.get("network_trained", 0)
    frozen = model.param_counts.get("text_encoder_frozen", 0)
    res = {
        "model_id": model.model_id,
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "int8_dynamic_quantization": model.quantized,
        "load_s": round(load_s, 2),
        "params_trainable_stored": trainable,
        "params_frozen_text_encoder_used": frozen,
        "checkpoint_bytes": size,
        "latency_ms_batch1_median": round(1000 * float(np.median(lat)), 2),
        "latency_ms_batch1_p90": round(1000 * float(np.percentile(lat, 90)), 2),
        "throughput_utt_per_s_batch32": round(thr, 1),
        "audio_s": args.audio_s,
        "context_turns": len(history),
        "params_context_stored": sum(p.numel() for p in model.context.parameters())
        if model.context is not None
        else 0,
        "input": "PCM (Whisper encoder included)"
        if args.raw_audio
        else "text + precomputed Whisper frames (ASR pass excluded)",
    }
    print(json.dumps(res, indent=2))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(res, indent=2) + "\n")
    return 0
