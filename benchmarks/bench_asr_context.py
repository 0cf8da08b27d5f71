"""Does conditioning on the speaker's previous text help? (issue 16, item 4: the
``condition_on_previous_text`` part of the WER gap). Not used by the pipeline; a measurement.

Each utterance is decoded (window ``--window``, beam ``--beam``) once alone and once with the
previous utterance *of the same speaker* as Whisper's previous-text prompt (``<|startofprev|>``
+ its hypothesis), as faster-whisper's ``condition_on_previous_text`` does within one file.
Speakers: the call's STM speakers, RAVDESS actors, TESS speakers (OAF / YAF).

    .venv/bin/python benchmarks/bench_asr_context.py [--ravdess DIR --tess DIR --n 40]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CALL = ROOT / "tests" / "data" / "phone-call-2spk.wav"
RAVDESS_TEXT = {"01": "kids are talking by the door", "02": "dogs are sitting by the door"}


def items(
    ravdess: Path | None, tess: Path | None, n: int
) -> list[tuple[str, str, np.ndarray, str]]:
    """(corpus, speaker, audio, reference), each speaker's clips in a seeded order."""
    from emomon.model.audio import decode_audio

    out = []
    call = decode_audio(CALL)
    for line in CALL.with_suffix(".stm").read_text().splitlines():
        f = line.split(maxsplit=5)
        s, e = float(f[3]) - 0.2, float(f[4]) + 0.2
        out.append(("call", f[2], call[int(s * 16000) : int(e * 16000)], f[5]))
    rng = random.Random(0)
    if ravdess is not None:
        files = sorted(ravdess.glob("Actor_*/*.*"))
        rng.shuffle(files)
        for p in sorted(files[:n], key=lambda p: p.parent.name):
            out.append(
                ("ravdess", p.parent.name, decode_audio(p), RAVDESS_TEXT[p.name.split("-")[4]])
            )
    if tess is not None:
        files = sorted(tess.rglob("*.flac")) + sorted(tess.rglob("*.wav"))
        rng.shuffle(files)
        for p in sorted(files[:n], key=lambda p: p.stem.split("_")[0]):
            word = p.stem.split("_")[1]
            out.append(("tess", p.stem.split("_")[0][-3:], decode_audio(p), f"say the word {word}"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ravdess", type=Path)
    ap.add_argument("--tess", type=Path)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--window", default="10+8/-23")
    ap.add_argument("--beam", type=int, nargs="+", default=[1, 5])
    args = ap.parse_args()

    from emomon.streamer.asr_batch import encode_batch
    from emomon.streamer.asr_decode import decode_group, token_budget
    from emomon.streamer.transcriber import Transcriber, TranscriberConfig
    from tests.helpers.scoring import normalise, wer

    tr = Transcriber(TranscriberConfig(encoder_window=args.window, language="en"))
    tok = tr._tokenizer(None)
    data = items(args.ravdess, args.tess, args.n)
    print(f"window {args.window}; previous text = the same speaker's previous hypothesis\n")
    print(f"{'corpus':<8} {'beam':>4} {'utts':>4} {'WER alone':>9} {'WER prev':>8}")
    for beam in args.beam:
        res: dict[str, list[list[str]]] = {}
        last: dict[tuple[str, str], list[int]] = {}
        for corpus, spk, audio, ref in data:
            enc, groups = encode_batch(tr.model, [audio], tr.window)
            budget = token_budget(audio.size / 16000)
            base = [*tok.sot_sequence, tok.no_timestamps]
            alone = decode_group(tr.model, groups[0], [base], tok, beam, budget)[0].text
            prev = last.get((corpus, spk))
            text = alone
            if prev:
                prompt = [tok.sot_prev, *prev[-200:], *base]
                text = decode_group(tr.model, groups[0], [prompt], tok, beam, budget)[0].text
            last[(corpus, spk)] = tok.encode(" " + text.strip())
            r = res.setdefault(corpus, [[], [], []])
            r[0] += normalise(ref)
            r[1] += normalise(alone)
            r[2] += normalise(text)
        for corpus, (ref, a, p) in res.items():
            n = sum(1 for d in data if d[0] == corpus)
            print(f"{corpus:<8} {beam:>4} {n:4d} {wer(ref, a):9.3f} {wer(ref, p):8.3f}", flush=True)
    tr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
