"""Language and noise through the real pipeline (issues 15.5 and 18.4): a Spanish recording
made with espeak-ng is flagged with its language and never published as English text, an
English one stays English, and 60 s of white or tremolo noise give no emotion labels.
Real models throughout: Whisper tiny.en, Whisper base as the language detector, the shipped
emotion checkpoint."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emomon.services.settings import Settings

pytestmark = pytest.mark.slow

# espeak-ng's Spanish is robotic: Whisper base hears Latin in some sentences ("Buenos días,
# quería preguntar ..." la 0.67 / es 0.20); these three it hears as Spanish (0.4-0.99).
SPANISH = [
    "Hola, soy María y llamo desde Madrid porque tengo un problema con la factura de este mes.",
    "¿Me puede ayudar a encontrarlo? Muchas gracias por su tiempo.",
    "Lo hice la semana pasada y todavía no ha llegado.",
]
ENGLISH = [
    "Good morning, I am calling about my order from last week.",
    "It still has not arrived.",
    "Could you please check it for me? Thank you very much.",
]


def espeak(sentences: list[str], voice: str, path: Path) -> Path:
    """One recording, the sentences 0.8 s apart (so that each is an utterance)."""
    from emomon.model.audio import decode_audio

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is needed (scripts/install.sh --dev)")
    parts = []
    for i, text in enumerate(sentences):
        raw = path.with_name(f"{path.stem}-{i}.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        parts += [decode_audio(raw), np.zeros(int(0.8 * 16000), np.float32)]
    return write_wav(path, np.concatenate(parts))


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def noises(tmp: Path, seconds: float = 60.0) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * 16000)) / 16000
    white = rng.standard_normal(t.size) * 0.1
    tremolo = rng.standard_normal(t.size) * 0.2 * (0.5 + 0.5 * np.sin(2 * np.pi * 5 * t))
    return {
        "white": write_wav(tmp / "white.wav", white),
        "tremolo": write_wav(tmp / "tremolo.wav", tremolo),
    }


def run_pipeline(settings: Settings, files: dict[str, Path]) -> tuple[Any, Any]:
    from emomon.services.pipeline import Pipeline, build_source
    from emomon.services.worker import FusionWorker

    async def main() -> Any:
        pipeline = Pipeline(settings, [], worker=FusionWorker(settings.worker))
        try:
            stats = await pipeline.run(
                [(name, build_source(str(p), settings)) for name, p in files.items()]
            )
            return stats, pipeline.transcriber
        finally:
            pipeline.close()

    return asyncio.run(main())


def by_session(events: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for e in events:
        out.setdefault(e.session, []).append(e)
    return out


def test_spanish_is_flagged_english_stays_noise_is_no_speech(tmp_path, caplog):
    files = {
        "es": espeak(SPANISH, "es-419", tmp_path / "es.wav"),
        "en": espeak(ENGLISH, "en-us", tmp_path / "en.wav"),
        **noises(tmp_path),
    }
    settings = Settings.model_validate(
        {"console": {"enabled": False}, "speakers": {"mode": "channel"}}
    )
    with caplog.at_level(logging.WARNING, logger="emomon.streamer.transcriber"):
        stats, tr = run_pipeline(settings, files)
    ev = by_session(stats.events_list)

    assert ev["es"], "the Spanish recording gave no events"
    for e in ev["es"]:
        assert e.language == "es", (e.language, e.text)
        assert not e.text  # never published as English text
        assert "text" not in e.modalities and e.outcome != "no_speech"
    warned = [r for r in caplog.records if "not English" in r.getMessage()]
    assert len(warned) == 1 and "'es'" in warned[0].getMessage()  # one WARNING per stream

    words = " ".join(e.text or "" for e in ev["en"]).lower()
    assert all(e.language == "en" for e in ev["en"])
    assert "order" in words and "week" in words, words
    assert all("text" in e.modalities for e in ev["en"])

    for name in ("white", "tremolo"):
        assert ev[name], f"{name} noise was not segmented at all"
        for e in ev[name]:
            assert e.outcome == "no_speech" and e.label == "no_speech", (name, e.label)
            assert not e.text
    assert stats.no_speech == len(ev["white"]) + len(ev["tremolo"])
    assert stats.foreign_language == len(ev["es"])
    print(
        f"es {len(ev['es'])} events, en {len(ev['en'])}, noise {stats.no_speech} no_speech; "
        f"detector {tr.detector.calls} calls, {1000 * tr.detector.seconds / tr.detector.calls:.0f}"
        f" ms each; batches {tr.batch_sizes}"
    )


def test_multilingual_base_keeps_the_language_and_text_only_for_english(tmp_path, caplog):
    """With Whisper base (offline, from two wheels) the Spanish transcript stays Spanish; the
    emotion model reads text only in English (worker.text_languages), so it is classified
    from audio while its transcript is still published."""
    files = {
        "es": espeak(SPANISH, "es-419", tmp_path / "es.wav"),
        "en": espeak(ENGLISH, "en-us", tmp_path / "en.wav"),
    }
    settings = Settings.model_validate(
        {"console": {"enabled": False}, "speakers": {"mode": "channel"}, "asr": {"model": "base"}}
    )
    with caplog.at_level(logging.WARNING):
        stats, tr = run_pipeline(settings, files)
    assert tr.multilingual and tr.detector is None  # base detects with its own encoder pass
    ev = by_session(stats.events_list)
    spanish = " ".join(e.text or "" for e in ev["es"]).lower()
    # espeak-ng's robotic Spanish: base hears Thai in one sentence (th 0.87) and two sessions'
    # utterances are transcribed concurrently, so the stream's evidence may arrive in any order
    langs = [e.language for e in ev["es"]]
    assert "en" not in langs and langs.count("es") > len(langs) / 2, langs
    # "gracias" or "gracia": which one depends on the beam, and the beam on the load (wide
    # while the ASR keeps up, greedy when the two sessions' utterances wait together)
    assert "factura" in spanish and "semana" in spanish and "graci" in spanish, spanish
    assert all(e.modalities == ("audio",) for e in ev["es"])
    english = " ".join(e.text or "" for e in ev["en"]).lower()
    assert all(e.language == "en" for e in ev["en"]) and "order" in english, english
    assert all("text" in e.modalities for e in ev["en"])
    assert any("classified from audio alone" in r.getMessage() for r in caplog.records)
    assert stats.foreign_language == 0  # base writes Spanish: nothing dropped by the streamer
