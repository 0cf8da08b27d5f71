"""Benchmarks of the distributed mode (issue #4), against a ``redis-server`` this script starts.

    python benchmarks/bench_redis.py                 # all three parts, real model if shipped
    python benchmarks/bench_redis.py --model standin # transport only (a zero-cost stand-in model)
    python benchmarks/bench_redis.py --parts latency

Parts:
  latency     end of ``offer``/``put`` -> event handed to the sink, one utterance at a time,
              Redis Streams versus the in-process queue (median, p95; what Redis *adds*).
  throughput  one worker draining a pre-filled stream at max_batch 1, 8, 32 (utterances/s).
  share       two ``emomon worker`` processes in one group drain the stream; the split.

Utterances are synthetic: 2 s of 16 kHz PCM (64 KB on the wire) and a short sentence.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emomon.services.delivery import Delivery
from emomon.services.events import EmotionEvent
from emomon.services.queue import wire
from emomon.services.queue.memory import InProcessQueue
from emomon.services.queue.redis import RedisProducer, RedisStreamWorker, connect
from emomon.services.settings import RedisSettings, WorkerSettings
from emomon.services.worker import FusionWorker
from emomon.streamer.utterance import SAMPLE_RATE_HZ, Utterance

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "model" / "checkpoints" / "default"
TEXTS = (
    "I can't believe it, that's amazing!",
    "Fine. Whatever.",
    "Why would you do that?",
    "Oh no.",
)


class ZeroCostModel:
    """Instant, fixed answers: measures the transport, not the model."""

    labels = ("neutral", "joy")
    model_id = "zero-cost"

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        from emomon.model.inference import EmotionPrediction

        return [
            EmotionPrediction("neutral", {"neutral": 1.0, "joy": 0.0}, 1.0, ("text",))
            for _ in batch
        ]


class TimingSink:
    """Records when each event was handed over (perf_counter), by utterance id."""

    name = "timing"

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def start(self) -> None:
        return None

    async def publish(self, event: EmotionEvent) -> None:
        self.at.setdefault(event.utterance_id, time.perf_counter())

    async def close(self) -> None:
        return None


def utterance(i: int, seconds: float = 2.0, frames: bool = True) -> Utterance:
    """2 s of noise, a sentence, and (like the ASR pass attaches) 50 Whisper frames/s of 384-d."""
    n = int(seconds * SAMPLE_RATE_HZ)
    rng = np.random.default_rng(i)
    pcm = rng.normal(0, 2000, n).astype(np.int16)
    wf = rng.normal(0, 0.5, (int(seconds * 50), 384)).astype(np.float32) if frames else None
    return Utterance(
        session=f"bench-{i % 4}",
        speaker=f"S{i % 2}",
        channel="0",
        utterance_id=f"b{i:06d}-{uuid.uuid4().hex[:6]}",
        start_s=2.0 * i,
        end_s=2.0 * i + seconds,
        end_wall=time.time(),
        pcm=pcm,
        text=TEXTS[i % len(TEXTS)],
        whisper_frames=wf,
    )


class Server:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("redis-server is not installed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def make_model(kind: str, checkpoint: str | None) -> Any:
    if kind == "real":
        from emomon.model import EmotionModel

        return EmotionModel.load(checkpoint, device="cpu")
    return ZeroCostModel()


# -- latency -----------------------------------------------------------------------------------
async def latency_redis(url: str, model: Any, n: int, gap_s: float) -> list[float]:
    settings = RedisSettings(url=url, stream=f"bench:lat:{uuid.uuid4().hex[:6]}")
    ws = WorkerSettings(device="cpu", max_batch=1, max_wait_ms=0)
    sink = TimingSink()
    worker = RedisStreamWorker(
        connect(url), settings, ws, FusionWorker(ws, model=model), [sink], consumer="lat"
    )
    await worker.ensure_group()
    producer = RedisProducer(connect(url), settings)
    producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    sent: dict[str, float] = {}
    for i in range(n):
        u = utterance(i)
        sent[u.utterance_id] = time.perf_counter()
        producer.offer(u)
        await asyncio.sleep(gap_s)
    while len(sink.at) < n:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    await producer.close(1.0)
    return [(sink.at[k] - t) * 1000 for k, t in sent.items()]


async def latency_memory(model: Any, n: int, gap_s: float) -> list[float]:
    ws = WorkerSettings(device="cpu", max_batch=1, max_wait_ms=0)
    fw = FusionWorker(ws, model=model)
    q = InProcessQueue(256)
    sink = TimingSink()
    delivery = Delivery(fw, [sink])

    async def back() -> None:
        while (batch := await q.get_batch(ws.max_batch, ws.max_wait_ms)) is not None:
            await delivery.deliver(batch)

    task = asyncio.create_task(back())
    sent: dict[str, float] = {}
    for i in range(n):
        u = utterance(i)
        sent[u.utterance_id] = time.perf_counter()
        await q.put(u)
        await asyncio.sleep(gap_s)
    await q.close()
    await task
    return [(sink.at[k] - t) * 1000 for k, t in sent.items()]


# -- throughput --------------------------------------------------------------------------------
async def fill(url: str, stream: str, n: int, frames: bool = True) -> None:
    c = connect(url)
    async with c.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(stream, wire.encode(utterance(i, frames=frames)))
        await pipe.execute()
    await c.aclose()


async def throughput(url: str, model: Any, n: int, batch: int, frames: bool = True) -> float:
    settings = RedisSettings(url=url, stream=f"bench:tp:{batch}:{uuid.uuid4().hex[:6]}")
    ws = WorkerSettings(device="cpu", max_batch=batch, max_wait_ms=20)
    sink = TimingSink()
    worker = RedisStreamWorker(
        connect(url), settings, ws, FusionWorker(ws, model=model), [sink], consumer="tp"
    )
    await worker.ensure_group()
    await fill(url, settings.stream, n, frames)
    await FusionWorker(ws, model=model).classify([utterance(0, frames=frames)])  # warm-up
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(worker.run(stop))
    while len(sink.at) < n:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    return n / elapsed


# -- two workers share ---------------------------------------------------------------------------
def share(url: str, kind: str, n: int, batch: int, checkpoint: str | None) -> dict[str, Any]:
    stream = f"bench:share:{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="emomon-bench-"))
    procs = []
    for name in ("w1", "w2"):
        cmd = [
            "worker",
            "--redis-url",
            url,
            "--stream",
            stream,
            "--consumer",
            name,
            "--device",
            "cpu",
            "--max-batch",
            str(batch),
            "--jsonl",
            str(tmp / f"{name}.jsonl"),
            "--no-console",
            "--log-level",
            "WARNING",
        ]
        if kind == "real":
            argv = [sys.executable, "-m", "emomon.services", *cmd]
            if checkpoint:
                argv += ["--checkpoint", checkpoint]
        else:  # the same command with the zero-cost model, via this script
            argv = [sys.executable, __file__, "--serve-worker", *cmd[1:]]
        procs.append(subprocess.Popen(argv, stderr=open(tmp / f"{name}.log", "wb")))  # noqa: SIM115

    async def joined() -> int:
        c = connect(url)
        try:
            return len(await c.xinfo_consumers(stream, RedisSettings().group))
        except Exception:  # noqa: BLE001 - no group yet
            return 0
        finally:
            await c.aclose()

    deadline = time.monotonic() + 180
    while asyncio.run(joined()) < 2:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"workers did not start; see {tmp}")
        time.sleep(0.1)
    asyncio.run(fill(url, stream, n))
    t0 = time.perf_counter()

    def counts() -> list[int]:
        return [
            len((tmp / f"{w}.jsonl").read_text().splitlines())
            if (tmp / f"{w}.jsonl").exists()
            else 0
            for w in ("w1", "w2")
        ]

    while sum(counts()) < n:
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.terminate()
    codes = [p.wait(30) for p in procs]
    split = counts()
    return {"split": split, "utt_per_s": round(n / elapsed, 1), "exit_codes": codes}


def _serve_worker(argv: list[str]) -> int:
    """``emomon worker`` with the zero-cost model (for --model standin)."""
    from emomon.services.cli import build_parser
    from emomon.services.commands.worker import serve_worker, settings_for

    args = build_parser().parse_args(["worker", *argv])
    st = settings_for(args)
    return asyncio.run(serve_worker(st, FusionWorker(st.worker, model=ZeroCostModel())))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-worker":
        return _serve_worker(sys.argv[2:])
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", choices=["auto", "real", "standin"], default="auto")
    ap.add_argument(
        "--checkpoint", metavar="DIR", help="model checkpoint (default: the shipped one)"
    )
    ap.add_argument("--parts", default="latency,throughput,share")
    ap.add_argument("--n-latency", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=6, help="interleaved latency rounds (pooled)")
    ap.add_argument("--n-throughput", type=int, default=256)
    ap.add_argument("--n-share", type=int, default=400)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args()
    ckpt = Path(a.checkpoint) if a.checkpoint else CHECKPOINT
    kind = (
        a.model if a.model != "auto" else ("real" if (ckpt / "config.json").exists() else "standin")
    )
    parts = set(a.parts.split(","))
    machine = f"{os.cpu_count()}-core {platform.machine()}, {platform.python_version()}, redis-server on loopback"
    print(
        f"# bench_redis: model={kind} ({ckpt if kind == 'real' else 'zero-cost stand-in'}); {machine}"
    )
    server = Server()
    out: dict[str, Any] = {"model": kind, "machine": machine}
    try:
        model = make_model(kind, a.checkpoint)
        if "latency" in parts:
            # Latency is about the transport, so it always uses the zero-cost model: the model's
            # own time is the same in both paths and would only add noise.
            gap = 0.01
            asyncio.run(latency_memory(ZeroCostModel(), 20, gap))  # warm-up
            # Interleaved rounds, pooled: on a shared machine the load drifts between runs, and
            # alternating keeps that drift from landing on one side of the comparison.
            mem: list[float] = []
            red: list[float] = []
            per_round = max(1, a.n_latency // a.rounds)
            for _ in range(a.rounds):
                mem += asyncio.run(latency_memory(ZeroCostModel(), per_round, gap))
                red += asyncio.run(latency_redis(server.url, ZeroCostModel(), per_round, gap))
            out["latency_ms"] = {
                "in_process": {
                    "median": round(statistics.median(mem), 2),
                    "p95": round(pct(mem, 95), 2),
                },
                "redis": {
                    "median": round(statistics.median(red), 2),
                    "p95": round(pct(red, 95), 2),
                },
                "added_by_redis": {
                    "median": round(statistics.median(red) - statistics.median(mem), 2),
                    "p95": round(pct(red, 95) - pct(mem, 95), 2),
                },
            }
            print(
                f"latency (offer -> sink, ms, n={len(red)} per path, {a.rounds} interleaved rounds): "
                f"{json.dumps(out['latency_ms'])}"
            )
        if "throughput" in parts:
            tp = {}
            for b in (1, 8, 32):
                tp[b] = round(asyncio.run(throughput(server.url, model, a.n_throughput, b)), 1)
                print(
                    f"throughput batch {b:>2}: {tp[b]} utterances/s (one worker, model={kind}, n={a.n_throughput})"
                )
            out["throughput_utt_per_s"] = tp
            if kind == "real":  # what shipping the ASR pass's Whisper frames saves the worker
                nf = max(8, a.n_throughput // 16)
                slow = round(asyncio.run(throughput(server.url, model, nf, 8, frames=False)), 2)
                out["throughput_without_frames_batch8"] = slow
                print(
                    f"throughput batch  8 without frames (worker re-runs Whisper's encoder): {slow} utterances/s (n={nf})"
                )
        if "share" in parts:
            out["two_workers"] = share(server.url, kind, a.n_share, 8, a.checkpoint)
            print(
                f"two workers, one group (batch 8, n={a.n_share}): {json.dumps(out['two_workers'])}"
            )
    finally:
        server.stop()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
