"""The end-of-turn model's settings on synthetic conversations (a dev set), then the real call.

At the first ``vad.end_of_turn_pause_ms`` of a pause, the segmenter asks smart-turn v3.2 whether
the utterance is complete and closes it at once when the answer reaches
``vad.end_of_turn_threshold`` (:mod:`emomon.streamer.end_of_turn`). Closing early saves most of
the hang-over at a turn's end; closing at a pause *inside* a sentence splits it (an utterance
without its end, worse text for the emotion model). Both are measured here, on conversations
the defaults may be tuned on: two RAVDESS actors take turns of one or two sentences, through a
telephone line (as ``bench_turns.py``); in half the sentences a pause of 150-250 ms is
inserted at the quietest point of their middle (a hesitation), between the sentences of one
turn there is a 150-250 ms breath, and between turns 0.5-1.2 s of silence. Reported per
setting:

* ``utt/turn``: utterances per reference turn (1.0 = no turn split);
* ``mid-split``: share of the mid-sentence pauses where an utterance was closed (the harm);
* ``closed p50/p95``: stream time from each turn's end of speech to the close of its utterance;
* ``model ms``: wall time per decision (features + ONNX, one thread) — add it to the stream
  time for a live source, where the audio goes on while the model thinks;
* ``WER`` (with ``--asr``): tiny.en, beam 1, each utterance alone, against the sentences.

The real call (tests/data/phone-call-2spk.wav) is printed last, held out: it is the test the
end-to-end suite scores, not data to choose defaults on. Usage:

    .venv/bin/python benchmarks/bench_end_of_turn.py --ravdess ../shared/data/ravdess \\
        [--conversations 12] [--asr] [--settings '{"end_of_turn_pause_ms": 0}' ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_turns import CALL, SR, telephone, trim, write_wav  # noqa: E402

RAVDESS_TEXT = {"01": "kids are talking by the door", "02": "dogs are sitting by the door"}
DEFAULT_SETTINGS = [
    '{"end_of_turn_pause_ms": 0}',
    '{"end_of_turn_pause_ms": 90, "end_of_turn_threshold": 0.5}',
    '{"end_of_turn_pause_ms": 120, "end_of_turn_threshold": 0.5}',
    '{"end_of_turn_pause_ms": 150, "end_of_turn_threshold": 0.5}',
    '{"end_of_turn_pause_ms": 120, "end_of_turn_threshold": 0.8}',
    '{"end_of_turn_pause_ms": 150, "end_of_turn_threshold": 0.9}',
    '{"end_of_turn_pause_ms": 210, "end_of_turn_threshold": 0.9}',
]


class Conversation:
    def __init__(self) -> None:
        self.turns: list[tuple[float, float]] = []  # (start, end of speech) of each turn
        self.pauses: list[tuple[float, float]] = []  # inserted mid-sentence pauses
        self.words: list[str] = []


def hesitate(x: np.ndarray, pause_s: float) -> tuple[np.ndarray, float]:
    """``x`` with ``pause_s`` of silence at its quietest 20 ms in the middle 35-65 %."""
    f = SR // 50
    n = x.size // f
    rms = np.sqrt((x[: n * f].reshape(n, f) ** 2).mean(1))
    lo, hi = int(n * 0.35), int(n * 0.65)
    k = (lo + int(np.argmin(rms[lo:hi]))) * f
    return np.concatenate([x[:k], np.zeros(int(pause_s * SR), np.float32), x[k:]]), k / SR


def conversations(ravdess: Path, n: int, seed: int) -> list[tuple[np.ndarray, Conversation]]:
    from emomon.model.audio import decode_audio

    rng = np.random.default_rng(seed)
    actors = sorted(p for p in ravdess.glob("Actor_*") if p.is_dir())
    if len(actors) < 2:
        raise SystemExit(f"no RAVDESS actors under {ravdess}")
    out = []
    for _ in range(n):
        pair = rng.choice(len(actors), 2, replace=False)
        clips = [sorted(actors[i].glob("*.flac")) + sorted(actors[i].glob("*.wav")) for i in pair]
        conv = Conversation()
        pieces = [np.zeros(SR, np.float32)]
        t = 1.0
        for turn in range(int(rng.integers(6, 10))):
            start = t
            for k in range(int(rng.integers(1, 3))):
                if k:  # a breath between two sentences of one turn
                    gap = float(rng.uniform(0.15, 0.25))
                    pieces.append(np.zeros(int(gap * SR), np.float32))
                    t += gap
                path = clips[turn % 2][int(rng.integers(len(clips[turn % 2])))]
                x = trim(decode_audio(path))
                if rng.random() < 0.5:
                    pause = float(rng.uniform(0.15, 0.25))
                    x, at = hesitate(x, pause)
                    conv.pauses.append((t + at, t + at + pause))
                pieces.append(x)
                t += x.size / SR
                conv.words += RAVDESS_TEXT[path.stem.split("-")[4]].split()
            conv.turns.append((start, t))
            gap = float(rng.uniform(0.5, 1.2))
            pieces.append(np.zeros(int(gap * SR), np.float32))
            t += gap
        pieces.append(np.zeros(SR, np.float32))
        out.append((telephone(np.concatenate(pieces)), conv))
    return out


async def segments(path: Path, vad: dict) -> tuple[list, list[float]]:
    """VAD (+ end-of-turn model) segments of one file, and the model's seconds per decision."""
    from emomon.services.pipeline import streamer_config
    from emomon.services.settings import load_settings
    from emomon.streamer.end_of_turn import EndOfTurn
    from emomon.streamer.segmenter import Segmenter
    from emomon.streamer.sources.file import FileSource
    from emomon.streamer.stages import SpeakerStage, StreamStats, speech

    s = load_settings(overrides={"vad": vad, "speakers": {"mode": "channel"}}, environ={})
    cfg = streamer_config(s)
    src = FileSource(path)
    eot = EndOfTurn(cfg.vad)
    stage = SpeakerStage(cfg.speakers, src)
    segs = [
        seg async for seg, *_ in speech(src.chunks(), Segmenter(cfg.vad), stage, StreamStats(), eot)
    ]
    return segs, eot.model_s


def transcribe(model, segs: list) -> list[str]:  # type: ignore[no-untyped-def]
    from tests.helpers.scoring import normalise

    words = []
    for seg in segs:
        parts, _ = model.transcribe(
            seg.pcm.astype(np.float32) / 32768.0, beam_size=1, language="en", vad_filter=False
        )
        words += normalise(" ".join(p.text for p in parts))
    return words


def evaluate(items: list, vad: dict, model) -> dict:  # type: ignore[no-untyped-def]
    from tests.helpers.scoring import wer

    n_turns = n_utts = mid = mid_split = 0
    closed, model_s, errs = [], [], []
    for path, conv in items:
        segs, ms = asyncio.run(segments(path, vad))
        model_s += ms
        n_turns += len(conv.turns)
        n_utts += len(segs)
        ends = np.array([s.end_s for s in segs])
        for a, b in conv.pauses:  # an utterance ending just before the pause split the sentence
            mid += 1
            mid_split += bool(np.any((ends > a - 0.2) & (ends <= b)))
        for _, end in conv.turns:
            near = [s for s in segs if abs(s.end_s - end) < 0.3]
            if near:
                closed.append(near[0].end_s - end + near[0].hangover_s)
        if model is not None:
            errs.append(wer(conv.words, transcribe(model, segs)))
    return {
        "utt_per_turn": n_utts / max(1, n_turns),
        "mid_split": mid_split / max(1, mid),
        "closed": closed,
        "model_ms": 1000 * float(np.mean(model_s)) if model_s else 0.0,
        "wer": float(np.mean(errs)) if errs else float("nan"),
    }


def call_item() -> tuple[Path, Conversation]:
    """The call's reference turns (same speaker, gap under 0.3 s: one turn) and words."""
    from tests.helpers.scoring import normalise

    conv = Conversation()
    last = ""
    for line in CALL.with_suffix(".stm").read_text().splitlines():
        _, _, who, a, b, *text = line.split()
        a_s, b_s = float(a), float(b)
        if conv.turns and who == last and a_s - conv.turns[-1][1] < 0.3:
            conv.turns[-1] = (conv.turns[-1][0], b_s)
        else:
            conv.turns.append((a_s, b_s))
        last = who
        conv.words += normalise(" ".join(text))
    return CALL, conv


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ravdess", type=Path, required=True, help="RAVDESS folder (Actor_01 ...)")
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--asr", action="store_true", help="also WER with tiny.en (slower)")
    ap.add_argument(
        "--settings", nargs="+", default=DEFAULT_SETTINGS, help="vad.* overrides as JSON"
    )
    args = ap.parse_args()
    model = None
    if args.asr:
        from emomon.model.audio import load_whisper_model

        model = load_whisper_model(cpu_threads=1)
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as tmp:
        synth = []
        for i, (x, conv) in enumerate(conversations(args.ravdess, args.conversations, args.seed)):
            p = Path(tmp) / f"conv{i:02d}.wav"
            write_wav(p, x)
            synth.append((p, conv))
        print(
            f"{len(synth)} synthetic conversations, {sum(len(c.turns) for _, c in synth)} turns, "
            f"{sum(len(c.pauses) for _, c in synth)} mid-sentence pauses; then the real call "
            "(held out: test data, not for tuning)\n"
        )
        print(
            f"{'vad.* overrides':<62} {'utt/turn':>8} {'mid-split':>9} {'closed p50/p95':>15} "
            f"{'model ms':>8} {'WER':>6} | call: utt/turn closed p50/p95  WER"
        )
        for item in args.settings:
            vad = json.loads(item)
            r = evaluate(synth, vad, model)
            c = evaluate([call_item()], vad, model)
            print(
                f"{json.dumps(vad):<62} {r['utt_per_turn']:8.2f} {r['mid_split']:9.2f} "
                f"{np.percentile(r['closed'], 50):6.2f}/{np.percentile(r['closed'], 95):5.2f} s "
                f"{r['model_ms']:8.0f} {r['wer']:6.3f} | {c['utt_per_turn']:8.2f}   "
                f"{np.percentile(c['closed'], 50):5.2f}/{np.percentile(c['closed'], 95):4.2f} s "
                f"{c['wer']:5.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
