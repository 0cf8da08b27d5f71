"""Speaker-turn detection on synthetic telephone conversations (a dev set) and on the real call.

The shipped call is the only real labelled conversation we have, and it is also what the
end-to-end test scores; tuning the turn detector on it would be tuning on the test. So the
detector's settings are compared on *synthetic* conversations first: two RAVDESS actors take
turns (each turn one or two clips of one actor, trimmed to their speech; turns follow each
other with no pause or one shorter than the VAD hang-over, as in a lively call), passed
through a telephone line (8 kHz band limit and G.711 μ-law), with exact reference turns. The
real call is printed last, for information. Per setting: mean speaker agreement (as the
end-to-end test scores it), segments, and how long after a turn change (or end of speech) each
segment was closed (stream time, p50 / p95), the wall time of detection (one thread,
as fast as the audio decodes), the CAM++ windows embedded, and the cuts each resolution made
(frames / short windows / long windows) with the long-window cuts the frames vetoed. No ASR,
no fusion. Usage:

    .venv/bin/python benchmarks/bench_turns.py --ravdess ../shared/data/ravdess \
        [--conversations 16] [--settings '{"segmentation": false}' '{}' ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CALL = ROOT / "tests" / "data" / "phone-call-2spk.wav"
SR = 16_000


def trim(x: np.ndarray, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing silence: keep 20 ms frames within 26 dB of the loudest one."""
    f = SR // 50
    n = x.size // f
    rms = np.sqrt((x[: n * f].reshape(n, f) ** 2).mean(1) + 1e-12)
    keep = np.flatnonzero(rms > rms.max() * 0.05)
    m = int(margin_s * SR)
    return x[max(0, keep[0] * f - m) : min(x.size, (keep[-1] + 1) * f + m)]


def telephone(x: np.ndarray) -> np.ndarray:
    """8 kHz band limit and G.711 μ-law (nearest code), back to 16 kHz."""
    from scipy.signal import resample_poly

    from emomon.model.g711 import roundtrip

    y = roundtrip(resample_poly(x, 1, 2), "ulaw")
    return resample_poly(y, 2, 1).astype(np.float32)


# RAVDESS file names carry the sentence: 03-01-EE-II-SS-RR-AA, SS = statement
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}


def statement(clip: Path) -> str:
    """The sentence a RAVDESS clip speaks, from its file name."""
    return STATEMENTS[clip.stem.split("-")[4]]


def conversations(
    ravdess: Path, n: int, seed: int = 0, texts: list[list[str]] | None = None
) -> list[tuple[np.ndarray, list[tuple[float, float, str]]]]:
    """``n`` synthetic conversations (audio, reference turns); ``texts``, when given, gains each
    conversation's sentences in the order spoken."""
    from emomon.model.audio import decode_audio

    rng = np.random.default_rng(seed)
    actors = sorted(p for p in ravdess.glob("Actor_*") if p.is_dir())
    if len(actors) < 2:
        raise SystemExit(f"no RAVDESS actors under {ravdess}")
    out = []
    for _ in range(n):
        a, b = rng.choice(len(actors), 2, replace=False)
        clips = {
            who: sorted(actors[i].glob("*.flac")) + sorted(actors[i].glob("*.wav"))
            for who, i in (("A", a), ("B", b))
        }
        pieces = [np.zeros(SR, dtype=np.float32)]
        t = 1.0
        turns = []
        said: list[str] = []
        who = "A"
        for _turn in range(int(rng.integers(7, 11))):
            start = t
            for k in range(int(rng.integers(1, 3))):
                if k:  # a short breath inside one person's turn
                    gap = float(rng.choice([0.1, 0.2]))
                    pieces.append(np.zeros(int(gap * SR), dtype=np.float32))
                    t += gap
                clip = clips[who][int(rng.integers(len(clips[who])))]
                x = trim(decode_audio(clip))
                said.append(statement(clip))
                pieces.append(x)
                t += x.size / SR
            turns.append((start, t, f"actor{a if who == 'A' else b}"))
            gap = float(rng.choice([0.0, 0.0, 0.05, 0.1, 0.15]))  # no pause a VAD could use
            pieces.append(np.zeros(int(gap * SR), dtype=np.float32))
            t += gap
            who = "B" if who == "A" else "A"
        pieces.append(np.zeros(SR, dtype=np.float32))
        out.append((telephone(np.concatenate(pieces)), turns))
        if texts is not None:
            texts.append(said)
    return out


def write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


async def detect(
    path: Path, over: dict, counts: dict[str, int] | None = None
) -> tuple[list[tuple[float, float, str, float]], float]:
    """Segments (start, end, speaker, closed after) and wall time; ``counts`` (if given) gains
    the cuts each resolution made and the window cuts the frames vetoed."""
    from emomon.services.pipeline import streamer_config
    from emomon.services.settings import load_settings
    from emomon.streamer.segmenter import Segmenter
    from emomon.streamer.sources.file import FileSource
    from emomon.streamer.stages import SpeakerStage, StreamStats, speech

    s = load_settings(
        overrides={"speakers": {"num_speakers": 2, "mode": "cluster", **over}}, environ={}
    )
    src = FileSource(path)
    cfg = streamer_config(s)
    stage = SpeakerStage(cfg.speakers, src, cfg.torch_threads)
    out = []
    t0 = time.perf_counter()
    windows0 = stage.embedder.windows
    async for seg, who, _prov, _dt in speech(
        src.chunks(), Segmenter(cfg.vad), stage, StreamStats()
    ):
        out.append((seg.start_s, seg.end_s, who, seg.hangover_s))
    if counts is not None:
        counts["cam"] = counts.get("cam", 0) + stage.embedder.windows - windows0
        for det in stage._detectors.values():
            for kind, n in {**det.cuts, "vetoed": det.vetoed}.items():
                counts[kind] = counts.get(kind, 0) + n
    return out, time.perf_counter() - t0


def cut_errors(
    turns: list[tuple[float, float, str]], out: list[tuple[float, float, str, float]]
) -> list[float]:
    """For each reference speaker change (the middle of the gap between two turns of different
    speakers), the distance (s) to the nearest segment boundary of the output (a segment's
    start after the first: a turn cut or a pause); ``inf`` where none lies within
    ``CUT_SEARCH_S``. Extra boundaries can only bring it closer: read it with the segment
    count."""
    bounds = np.array([s for s, *_ in out[1:]])
    errs = []
    for (_, end, who), (start, _, nxt) in zip(turns, turns[1:], strict=False):
        if who == nxt:
            continue
        change = (end + start) / 2
        d = float(np.min(np.abs(bounds - change))) if bounds.size else np.inf
        errs.append(d if d <= CUT_SEARCH_S else np.inf)
    return errs


CUT_SEARCH_S = 1.0


def score(
    items: list[tuple[Path, list]], over: dict, counts: dict[str, int] | None = None
) -> tuple[float, float, int, list[float], float, list[float]]:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.scoring import speaker_agreement

    agree, worst, segs, late, wall, errs = [], 1.0, 0, [], 0.0, []
    for path, turns in items:
        out, dt = asyncio.run(detect(path, over, counts))
        a = speaker_agreement(turns, [(s, e, w) for s, e, w, _ in out]) if out else 0.0
        agree.append(a)
        worst = min(worst, a)
        segs += len(out)
        late += [h for *_, h in out]
        wall += dt
        errs += cut_errors(turns, out)
    return float(np.mean(agree)), worst, segs, late, wall, errs


def cut_summary(errs: list[float]) -> str:
    """Reference changes with a boundary within 1 s: median / p90 distance in ms, how many."""
    found = [e for e in errs if np.isfinite(e)]
    if not found:
        return f"{'-':>13} 0/{len(errs)}"
    p50, p90 = np.percentile(found, [50, 90]) * 1000
    return f"{p50:5.0f}/{p90:4.0f} ms {len(found):2d}/{len(errs)}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ravdess", type=Path, required=True, help="RAVDESS folder (Actor_01 ...)")
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--settings",
        nargs="+",
        default=['{"segmentation": false}', "{}"],
        help="speakers.* overrides as JSON, one detector setting each",
    )
    args = ap.parse_args()
    from emomon.streamer.config import set_torch_threads
    from tests.helpers.scoring import read_rttm

    set_torch_threads(1)
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as tmp:
        synth = []
        for i, (x, turns) in enumerate(conversations(args.ravdess, args.conversations, args.seed)):
            p = Path(tmp) / f"conv{i:02d}.wav"
            write_wav(p, x)
            synth.append((p, turns))
        total_s = sum(sum(e - s for s, e, _ in t) for _, t in synth)
        print(
            f"{len(synth)} synthetic conversations, {sum(len(t) for _, t in synth)} turns, "
            f"{total_s:.0f} s of speech; then the real call (test data, not for tuning)\n"
        )
        print(
            f"{'speakers.* overrides':<58} {'agree':>6} {'worst':>6} {'segs':>5} "
            f"{'closed p50/p95':>15} {'wall s':>6} {'CAM++':>6} {'cuts f/s/l/veto':>15} "
            f"{'cut off by p50/p90, found':>25} | call: agree segs  p50/p95  cut off by"
        )
        call = [(CALL, read_rttm(CALL.with_suffix(".rttm")))]
        for item in args.settings:
            over = json.loads(item)
            counts: dict[str, int] = {}
            a, worst, n, late, wall, errs = score(synth, over, counts)
            ca, _, cn, clate, _, cerrs = score(call, over)
            cuts = "/".join(str(counts.get(k, 0)) for k in ("frames", "short", "long", "vetoed"))
            print(
                f"{json.dumps(over):<58} {a:6.3f} {worst:6.3f} {n:5d} "
                f"{np.percentile(late, 50):6.2f}/{np.percentile(late, 95):5.2f} s {wall:6.1f} "
                f"{counts.get('cam', 0):6d} {cuts:>15} {cut_summary(errs):>25} | "
                f"{ca:5.3f} {cn:4d} {np.percentile(clate, 50):5.2f}/{np.percentile(clate, 95):4.2f} s "
                f"{cut_summary(cerrs)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
