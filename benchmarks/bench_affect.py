"""Does the published valence/arousal mapping track what RAVDESS actors acted? (issue 17)

Each RAVDESS clip (emotion and intensity are in its file name) goes through the live path — the
shipped Whisper tiny.en for text and frames, then the fusion worker — and the event's
``valence``/``arousal`` (services/affect.py: NRC VAD Lexicon coordinates of the classes,
probability-weighted) are compared with the acted labels:

* mean valence and arousal per acted emotion (pleasant/unpleasant, calm/excited ordering);
* how well arousal separates *strong* from *normal* intensity (AUC, all non-neutral clips), next
  to a logistic regression *learned* from the same seven probabilities, cross-validated by actor
  (trained on the other actors' clips): the "learned from RAVDESS intensity" alternative.

    EMOMON_DATA_DIR=/path/to/data .venv/bin/python benchmarks/bench_affect.py [--actors 19 20 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from pathlib import Path

import numpy as np

ACTED = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}  # fmt: skip


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties count half (Mann-Whitney U / n1 n2)."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


async def classify_all(clips: list[Path]) -> list[dict]:
    from emomon.model.audio import decode_audio
    from emomon.services.pipeline import transcriber_config
    from emomon.services.settings import load_settings
    from emomon.services.worker import FusionWorker
    from emomon.streamer.transcriber import Transcriber
    from emomon.streamer.utterance import SAMPLE_RATE_HZ, Utterance

    settings = load_settings(environ={})
    transcriber = Transcriber(transcriber_config(settings))
    worker = FusionWorker(settings.worker)
    out = []
    try:
        for i, clip in enumerate(clips):
            audio = decode_audio(clip)
            tr = await transcriber.transcribe(audio)
            utt = Utterance(
                session=clip.stem,  # each clip alone: no conversation context
                speaker="actor",
                channel="0",
                utterance_id=f"{clip.stem}:{i}",
                start_s=0.0,
                end_s=len(audio) / SAMPLE_RATE_HZ,
                end_wall=time.time(),
                pcm=(np.clip(audio, -1, 1) * 32767).astype(np.int16),
                text=tr.text,
                language=tr.language,
                whisper_frames=tr.frames,
                whisper_window=tr.frames_window,
            )
            (ev,) = await worker.classify([utt])
            out.append(ev.to_dict())
    finally:
        transcriber.close()
        worker.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ravdess-dir", default=None, help="default $EMOMON_DATA_DIR/ravdess")
    ap.add_argument(
        "--actors",
        type=int,
        nargs="+",
        default=[19, 20, 21, 22, 23, 24],
        help="actors to use (default 19-24, held out of the shipped model's training)",
    )
    args = ap.parse_args()

    from emomon.model.data_dirs import data_dir
    from emomon.model.datasets import parse_ravdess_name

    root = data_dir("ravdess", args.ravdess_dir)
    clips, meta = [], []
    for actor in args.actors:
        for p in sorted((root / f"Actor_{actor:02d}").glob("*")):
            f = parse_ravdess_name(p.stem)
            if f is not None and f["vocal"] == "01":  # speech, not song
                clips.append(p)
                meta.append(f)
    if not clips:
        raise SystemExit(f"no RAVDESS speech clips for actors {args.actors} under {root}")
    t0 = time.time()
    events = asyncio.run(classify_all(clips))
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}; {len(clips)} clips of "
        f"actors {args.actors} in {time.time() - t0:.0f} s; model {events[0]['model_id']}\n"
    )
    v = np.array([e["valence"] for e in events])
    a = np.array([e["arousal"] for e in events])
    emo = np.array([ACTED[m["emotion"]] for m in meta])
    strong = np.array([m["intensity"] == "02" for m in meta])
    actor = np.array([int(m["actor"]) for m in meta])

    print("acted emotion   clips  mean valence  mean arousal")
    for name in sorted(set(emo), key=lambda n: -v[emo == n].mean()):
        sel = emo == name
        print(f"{name:<14} {sel.sum():6d}  {v[sel].mean():+12.3f}  {a[sel].mean():12.3f}")

    acted = emo != "neutral"  # neutral has normal intensity only
    print(
        f"\nstrong vs normal intensity ({acted.sum()} clips): mean arousal "
        f"{a[acted & strong].mean():.3f} vs {a[acted & ~strong].mean():.3f}; "
        f"AUC of the mapped arousal {auc(a[acted & strong], a[acted & ~strong]):.3f}"
    )
    from sklearn.linear_model import LogisticRegression

    probs = np.array([[e["probabilities"][k] for k in sorted(e["probabilities"])] for e in events])
    scores = np.zeros(len(events))
    for held in sorted(set(actor[acted])):  # leave one actor out
        train, test = acted & (actor != held), acted & (actor == held)
        lr = LogisticRegression(max_iter=1000).fit(probs[train], strong[train])
        scores[test] = lr.predict_proba(probs[test])[:, 1]
    print(
        "AUC of a logistic regression learned from the seven probabilities "
        f"(leave-one-actor-out): {auc(scores[acted & strong], scores[acted & ~strong]):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
