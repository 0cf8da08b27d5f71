"""Language detection cost and accuracy (issue 15.5): Whisper base's language head on the
detection window (``streamer/language.py``, 8 s since round 12), per utterance, and what the per-stream
policy costs on a stream.

Prints, per clip set: utterances, mean / p95 ms per detection call, the share whose top
language is right, and the share an English-only pipeline would treat correctly (English
kept, other languages dropped). Sets: the shipped call cut at its STM turns (English, 0.8-4.8 s),
RAVDESS / TESS clips when given (English), and espeak-ng sentences in English, Spanish, German
and French made on the spot (when espeak-ng is installed). Then one stream: the call's 13 turns
as one speaker, through :class:`StreamLanguage`, counting the detector calls the policy makes.

    .venv/bin/python benchmarks/bench_language.py [--ravdess DIR --tess DIR --n 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_asr_window import items  # noqa: E402

SENTENCES = {
    "en": ["Could you tell me when the next train to the city leaves?", "I am not sure."],
    "es": ["¿Me puede decir cuándo sale el próximo tren a la ciudad?", "No estoy seguro."],
    "de": ["Können Sie mir sagen, wann der nächste Zug in die Stadt fährt?", "Ich weiß nicht."],
    "fr": ["Pouvez-vous me dire quand part le prochain train pour la ville?", "Je ne sais pas."],
}
# --windows also reads these (more utterances per language, for comparing detection windows)
MORE_SENTENCES = {
    "en": [
        "My order has not arrived yet, and I would like to know why.",
        "Yes, that is fine.",
        "Thank you very much for your help today.",
        "Can you send me the invoice by email, please?",
    ],
    "es": [
        "Mi pedido todavía no ha llegado y quisiera saber por qué.",
        "Sí, está bien.",
        "Muchas gracias por su ayuda hoy.",
        "¿Me puede enviar la factura por correo electrónico, por favor?",
    ],
    "de": [
        "Meine Bestellung ist noch nicht angekommen, und ich möchte wissen, warum.",
        "Ja, das ist in Ordnung.",
        "Vielen Dank für Ihre Hilfe heute.",
        "Können Sie mir die Rechnung bitte per E-Mail schicken?",
    ],
    "fr": [
        "Ma commande n'est pas encore arrivée et je voudrais savoir pourquoi.",
        "Oui, c'est bien.",
        "Merci beaucoup pour votre aide aujourd'hui.",
        "Pouvez-vous m'envoyer la facture par courriel, s'il vous plaît?",
    ],
}


def espeak_clips(more: bool = False) -> list[tuple[str, np.ndarray]]:
    from emomon.model.audio import decode_audio

    if shutil.which("espeak-ng") is None:
        print("espeak-ng not installed: no synthetic clips")
        return []
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for lang, texts in SENTENCES.items():
            texts = texts + (MORE_SENTENCES[lang] if more else [])
            for i, text in enumerate(texts):
                p = Path(tmp) / f"{lang}{i}.wav"
                voice = "en-us" if lang == "en" else lang
                subprocess.run(["espeak-ng", "-v", voice, "-w", str(p), text], check=True)
                out.append((lang, decode_audio(p)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ravdess", type=Path)
    ap.add_argument("--tess", type=Path)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument(
        "--windows",
        nargs="+",
        help="compare detection windows instead (WhisperWindow specs such as 8+0/-23, the "
        "shipped one, 10+0/-23, the one of rounds 7-11, or 6+2/-23): per set, ms per call, top-1 right, mean probability of the "
        "right language; more espeak-ng sentences per language",
    )
    args = ap.parse_args()

    from emomon.streamer.language import StreamLanguage
    from emomon.streamer.transcriber import Transcriber, TranscriberConfig

    tr = Transcriber(TranscriberConfig())  # loads base as the detector beside tiny.en
    det = tr.detector
    assert det is not None
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    for corpus, audio, _ in items(args.ravdess, args.tess, args.n):
        sets.setdefault(corpus, []).append(("en", audio))
    for lang, audio in espeak_clips(more=bool(args.windows)):
        sets.setdefault("espeak-" + lang, []).append((lang, audio))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    if args.windows:
        compare_windows(det.model, sets, args.windows)
        tr.close()
        return 0
    print(
        f"detector: Whisper base int8, 1 thread, window {det.window.min_s:g} s, first 8 s of speech\n"
    )
    det.detect(sets["call"][0][1])  # warm-up
    print(
        f"{'set':<11} {'utts':>4} {'mean s':>6} {'ms mean':>7} {'ms p95':>6} {'top ok':>6} {'en-only ok':>10}"
    )
    for name, clips in sets.items():
        ms, top_ok, keep_ok = [], 0, 0
        for lang, audio in clips:
            t0 = time.perf_counter()
            probs = det.detect(audio)
            ms.append((time.perf_counter() - t0) * 1000)
            top = max(probs, key=probs.__getitem__)
            top_ok += top == lang
            st = StreamLanguage(tr.config.lid_settle_s, tr.config.lid_recheck_s)
            guess = st.add(probs, audio.size / 16000)  # a stream's first utterance, prior included
            keep_ok += (guess is not None and guess.language == "en") == (lang == "en")
        dur = np.mean([a.size for _, a in clips]) / 16000
        print(
            f"{name:<11} {len(clips):4d} {dur:6.1f} {np.mean(ms):7.0f} {np.percentile(ms, 95):6.0f} "
            f"{top_ok / len(clips):6.2f} {keep_ok / len(clips):10.2f}",
            flush=True,
        )
    st = StreamLanguage(tr.config.lid_settle_s, tr.config.lid_recheck_s)
    calls = 0
    for _, audio in sets["call"]:
        probs = None
        if st.wants_measurement():
            probs = det.detect(audio)
            calls += 1
        g = st.add(probs, audio.size / 16000)
    total = sum(a.size for _, a in sets["call"]) / 16000
    print(
        f"\none stream, the call's {len(sets['call'])} turns ({total:.0f} s of speech): "
        f"{calls} detector calls, settled on {g.language if g else None!r}"
    )
    tr.close()
    return 0


def compare_windows(model, sets: dict[str, list[tuple[str, np.ndarray]]], specs: list[str]) -> None:
    """Each detection window on every set: ms per call, top-1 right, mean p(right language).
    The call is printed for information; choose on the other sets."""
    from emomon.model.audio import WhisperWindow
    from emomon.streamer.language import LanguageDetector

    print("detector: Whisper base int8, 1 thread, first 8 s of each utterance\n")
    print(
        f"{'window':<10} {'set':<11} {'utts':>4} {'mean s':>6} {'ms mean':>7} {'top ok':>6} {'p right':>7}"
    )
    for spec in specs:
        det = LanguageDetector(model, WhisperWindow.parse(spec))
        det.detect(sets["call"][0][1])  # warm-up
        for name, clips in sets.items():
            ms, ok, p = [], 0, []
            for lang, audio in clips:
                t0 = time.perf_counter()
                probs = det.detect(audio)
                ms.append((time.perf_counter() - t0) * 1000)
                ok += max(probs, key=probs.__getitem__) == lang
                p.append(probs.get(lang, 0.0))
            dur = np.mean([a.size for _, a in clips]) / 16000
            print(
                f"{spec:<10} {name:<11} {len(clips):4d} {dur:6.1f} {np.mean(ms):7.0f} "
                f"{ok / len(clips):6.2f} {np.mean(p):7.3f}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
