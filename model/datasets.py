"""Dataset loaders for the official layouts, and the label-mapping table.

Every loader returns a list of :class:`Sample` (text, optional audio file, label
already mapped onto the target label set). Mapping is one table,
:data:`LABEL_MAPS`, so adding a corpus means adding a row, not ``if`` branches.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DatasetError

#: MELD's 7 classes: the shipped model's label space (issue #2, item 5).
MELD_LABELS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")

#: IEMOCAP's six standard classes (hap, sad, neu, ang, exc, fru) as a label space of their own.
IEMOCAP6_LABELS: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "excited", "frustrated")

#: named label spaces a model can be trained on (``emomon train --iemocap-labels``)
LABEL_SETS: dict[str, tuple[str, ...]] = {"meld7": MELD_LABELS, "iemocap6": IEMOCAP6_LABELS}

#: table (corpus, or corpus + label space) → {corpus label → target label}; a label missing
#: from a row is dropped.
LABEL_MAPS: dict[str, dict[str, str]] = {
    "meld": {k: k for k in MELD_LABELS},
    "iemocap": {
        "neu": "neutral",
        "hap": "joy",
        "exc": "joy",
        "sad": "sadness",
        "ang": "anger",
        "sur": "surprise",
        "fea": "fear",
        "dis": "disgust",
    },  # fru, oth, xxx: no MELD class, dropped
    "iemocap6": {
        "hap": "happy",
        "sad": "sad",
        "neu": "neutral",
        "ang": "angry",
        "exc": "excited",
        "fru": "frustrated",
    },  # IEMOCAP-6: sur, fea, dis, oth, xxx dropped
    "ravdess": {
        "01": "neutral",
        "02": "neutral",
        "03": "joy",
        "04": "sadness",
        "05": "anger",
        "06": "fear",
        "07": "disgust",
        "08": "surprise",
    },  # 02 calm → neutral, 03 happy → joy, 06 fearful → fear, 08 surprised → surprise
    "tess": {
        "neutral": "neutral",
        "happy": "joy",
        "sad": "sadness",
        "angry": "anger",
        "fear": "fear",
        "disgust": "disgust",
        "ps": "surprise",
        "pleasant_surprise": "surprise",
    },
    "manifest": {k: k for k in MELD_LABELS},
}

#: RAVDESS speech statements, by the ``SS`` field of the file name.
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
AUDIO_SUFFIXES = (".wav", ".flac", ".mp4", ".mp3", ".ogg", ".m4a")


@dataclass(frozen=True)
class Sample:
    """One labelled utterance.

    ``context`` holds the previous utterances of the same conversation, oldest
    first (causal: never future ones), for the optional context input.
    """

    uid: str
    text: str | None
    label: str
    audio_path: Path | None = None
    group: str = ""  # speaker / actor / dialogue: what a split must keep together
    dataset: str = ""
    context: tuple[str, ...] = ()
    # conversation structure for the context model: samples of one dialogue, listed in order
    dialogue: str = ""  # "" = not part of a conversation (an isolated clip)
    speaker: str = ""


def map_label(corpus: str, raw: str, labels: Sequence[str] = MELD_LABELS) -> str | None:
    """Map a corpus label onto ``labels`` via the :data:`LABEL_MAPS` row ``corpus``; ``None`` =
    drop."""
    target = LABEL_MAPS[corpus].get(raw.strip().lower() if corpus != "ravdess" else raw)
    return target if target in labels else None


def parse_actor_range(spec: str) -> list[int]:
    """Parse ``"19-24"`` or ``"1,3,5-7"`` into a list of actor numbers."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def split_dialogues(
    samples: Sequence[Sample], fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """``(kept, held_out)``: a seeded ``fraction`` of the dialogues, whole (no conversation on
    both sides), e.g. the dev subset of IEMOCAP sessions 1–4 in the standard split. Samples
    without a dialogue count as dialogues of their own."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"the held-out fraction must be in (0, 1), got {fraction}")
    dialogues = sorted({s.dialogue or s.uid for s in samples})
    n = max(1, round(fraction * len(dialogues))) if dialogues else 0
    held = set(random.Random(seed).sample(dialogues, n))
    kept = [s for s in samples if (s.dialogue or s.uid) not in held]
    return kept, [s for s in samples if (s.dialogue or s.uid) in held]


# --------------------------------------------------------------------------- MELD
_MELD_CSV = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
_MELD_RAW_DIRS = {
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "dev"),
    "test": ("output_repeated_splits_test", "test"),
}


def _find_clip(audio_dir: Path | None, split: str, dia: str, utt: str) -> Path | None:
    if audio_dir is None:
        return None
    stem = f"dia{dia}_utt{utt}"
    for sub in ("", *_MELD_RAW_DIRS[split]):
        for suffix in (".mp4", ".wav", ".flac"):
            p = audio_dir / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def load_meld(
    meld_dir: str | Path,
    split: str,
    audio_dir: str | Path | None = None,
    labels: Sequence[str] = MELD_LABELS,
    context_turns: int = 0,
) -> list[Sample]:
    """MELD ``{split}_sent_emo.csv`` (+ optional ``MELD.Raw`` clips ``dia{D}_utt{U}.*``).

    Args:
        meld_dir: folder with the official CSVs.
        split: ``train`` | ``dev`` | ``test``.
        audio_dir: optional ``MELD.Raw`` folder (or a flat folder of clips).
        context_turns: how many previous utterances of the dialogue to attach.
    """
    if split not in _MELD_CSV:
        raise DatasetError(f"MELD split must be one of {sorted(_MELD_CSV)}, got {split!r}")
    path = Path(meld_dir) / _MELD_CSV[split]
    if not path.is_file():
        raise DatasetError(f"{path} not found; point --meld-dir at the folder with MELD's CSVs")
    adir = Path(audio_dir) if audio_dir else None
    samples: list[Sample] = []
    history: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: (int(r["Dialogue_ID"]), int(r["Utterance_ID"])))
    for r in rows:
        dia, utt = r["Dialogue_ID"], r["Utterance_ID"]
        text = (
            r["Utterance"]
            .replace("\u2019", "'")
            .replace("\u2018", "'")
            .replace("\x92", "'")
            .strip()
        )
        hist = history.setdefault(dia, [])
        ctx = tuple(hist[-context_turns:]) if context_turns > 0 else ()
        hist.append(text)
        label = map_label("meld", r["Emotion"], labels)
        if label is None:
            continue
        samples.append(
            Sample(
                uid=f"meld/{split}/dia{dia}_utt{utt}",
                text=text,
                label=label,
                audio_path=_find_clip(adir, split, dia, utt),
                group=f"dia{dia}",
                dataset="meld",
                context=ctx,
                dialogue=f"meld/{split}/dia{dia}",
                speaker=r.get("Speaker", "").strip(),
            )
        )
    return samples


# ------------------------------------------------------------------------ IEMOCAP
_EMO_LINE = re.compile(r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(\S+)\t(\S+)\t")
_TRANS_LINE = re.compile(r"^(\S+) \[[\d.]+-[\d.]+\]: ?(.*)$")


def load_iemocap(
    root: str | Path,
    sessions: Iterable[int] = (1, 2, 3, 4, 5),
    labels: Sequence[str] = MELD_LABELS,
    context_turns: int = 0,
) -> list[Sample]:
    """IEMOCAP ``IEMOCAP_full_release/Session*/`` (EmoEvaluation + transcriptions + wav).

    ``labels`` picks the table: IEMOCAP-6 names (:data:`IEMOCAP6_LABELS` or a subset) keep
    IEMOCAP's own classes, otherwise the labels map onto the MELD classes. A turn dropped for
    its label still appears in the ``context`` of the turns after it, as in a live session.
    """
    own = set(IEMOCAP6_LABELS) - set(MELD_LABELS)
    table = "iemocap6" if own & set(labels) else "iemocap"
    root = Path(root)
    if (root / "IEMOCAP_full_release").is_dir():
        root = root / "IEMOCAP_full_release"
    samples: list[Sample] = []
    found = False
    for s in sessions:
        sess = root / f"Session{s}"
        emo_dir = sess / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            continue
        found = True
        for emo_file in sorted(emo_dir.glob("*.txt")):
            dialog = emo_file.stem
            texts: dict[str, str] = {}
            tfile = sess / "dialog" / "transcriptions" / f"{dialog}.txt"
            if tfile.is_file():
                for line in tfile.read_text(encoding="utf-8", errors="replace").splitlines():
                    m = _TRANS_LINE.match(line.strip())
                    if m:
                        texts[m.group(1)] = m.group(2).strip()
            turns: list[tuple[float, str, str]] = []
            for line in emo_file.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _EMO_LINE.match(line)
                if m:
                    turns.append((float(m.group(1)), m.group(3), m.group(4)))
            turns.sort()
            hist: list[str] = []
            for _, utt_id, raw in turns:
                text = texts.get(utt_id, "")
                ctx = tuple(hist[-context_turns:]) if context_turns > 0 else ()
                hist.append(text)
                label = map_label(table, raw, labels)
                if label is None:
                    continue
                wav = sess / "sentences" / "wav" / dialog / f"{utt_id}.wav"
                samples.append(
                    Sample(
                        uid=f"iemocap/{utt_id}",
                        text=text or None,
                        label=label,
                        audio_path=wav if wav.is_file() else None,
                        group=f"Session{s}",
                        dataset="iemocap",
                        context=ctx,
                        dialogue=f"iemocap/{dialog}",
                        # Ses01F_impro01_F000: the last part's first letter is who speaks
                        speaker=f"{dialog[:5]}{utt_id.rsplit('_', 1)[-1][:1]}",
                    )
                )
    if not found:
        raise DatasetError(
            f"no Session*/dialog/EmoEvaluation under {root}; point --iemocap-dir at "
            "IEMOCAP_full_release (or its parent)"
        )
    return samples


# ------------------------------------------------------------------------ RAVDESS
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def parse_ravdess_name(stem: str) -> dict[str, str] | None:
    """Fields of a RAVDESS name ``MM-VV-EE-II-SS-RR-AA``; ``None`` if it is not one."""
    m = _RAVDESS_NAME.match(stem)
    if not m:
        return None
    keys = ("modality", "vocal", "emotion", "intensity", "statement", "repetition", "actor")
    return dict(zip(keys, m.groups(), strict=True))


def load_ravdess(
    root: str | Path, actors: Iterable[int] | None = None, labels: Sequence[str] = MELD_LABELS
) -> list[Sample]:
    """RAVDESS speech clips found by name under ``root`` (``Actor_XX/*.wav|flac``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; point --ravdess-dir at the Actor_XX folders")
    keep = set(actors) if actors is not None else None
    samples: list[Sample] = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        f = parse_ravdess_name(p.stem)
        if f is None or f["vocal"] != "01":  # 01 = speech (02 = song)
            continue
        actor = int(f["actor"])
        if keep is not None and actor not in keep:
            continue
        label = map_label("ravdess", f["emotion"], labels)
        if label is None:
            continue
        samples.append(
            Sample(
                uid=f"ravdess/{p.stem}",
                text=RAVDESS_STATEMENTS.get(f["statement"]),
                label=label,
                audio_path=p,
                group=f"actor{actor:02d}",
                dataset="ravdess",
            )
        )
    if not samples:
        raise DatasetError(f"no RAVDESS speech files (03-01-EE-II-SS-RR-AA.*) under {root}")
    return samples


# --------------------------------------------------------------------------- TESS
# Strict on the speaker: the copy here has one misnamed file ("751testOA_bite_neutral48"),
# skipped; accepting it would change the seeded --tess-max subsets of the documented runs.
_TESS_NAME = re.compile(r"(OAF|YAF)_([A-Za-z]+)_([A-Za-z_]+?)\d*$")


def parse_tess_name(stem: str) -> tuple[str, str, str] | None:
    """``(speaker, word, emotion)`` from a TESS name such as ``OAF_back_fear`` or
    ``12testYAF_gaze_ps39``; ``None`` if it is not one."""
    m = _TESS_NAME.search(stem)
    if not m:
        return None
    return m.group(1), m.group(2).lower(), m.group(3).lower()


def load_tess(root: str | Path, labels: Sequence[str] = MELD_LABELS) -> list[Sample]:
    """TESS clips, labelled by file name (``OAF_word_emotion``); text = the carrier phrase."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; point --tess-dir at the TESS clips")
    samples: list[Sample] = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        parsed = parse_tess_name(p.stem)
        if parsed is None:
            continue
        speaker, word, emo = parsed
        label = map_label("tess", emo, labels)
        if label is None:
            continue
        samples.append(
            Sample(
                uid=f"tess/{p.parent.name}/{p.stem}",
                text=f"Say the word {word}.",
                label=label,
                audio_path=p,
                group=speaker,
                dataset="tess",
            )
        )
    if not samples:
        raise DatasetError(f"no TESS files (OAF_word_emotion.*) under {root}")
    return samples


# ----------------------------------------------------------------------- manifest
def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"manifest {path} not found")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    else:
        raise DatasetError(f"manifest {path}: use .jsonl or .csv")
    return rows


def manifest_has_split(path: str | Path) -> bool:
    """Whether the manifest's rows say which split they belong to (a ``split`` column)."""
    return any(r.get("split") for r in _manifest_rows(Path(path)))


def load_manifest(
    path: str | Path, labels: Sequence[str] = MELD_LABELS, split: str | None = None
) -> list[Sample]:
    """A generic JSONL or CSV manifest with ``text``, ``audio`` (path, relative to the
    manifest allowed), ``label`` and optional ``id``, ``group``, ``context`` (JSON list),
    ``dialogue`` and ``speaker`` (rows of one dialogue in conversation order: the context
    model's input) and ``split`` (train | dev | test). With ``split`` given, only rows of that
    split are kept — all rows if the manifest has no ``split`` column."""
    path = Path(path)
    rows = _manifest_rows(path)
    samples: list[Sample] = []
    has_split = any(r.get("split") for r in rows)
    for i, r in enumerate(rows):
        if split is not None and has_split and str(r.get("split") or "").strip() != split:
            continue
        if "label" not in r:
            raise DatasetError(f"manifest {path} row {i + 1}: missing 'label'")
        label = str(r["label"]).strip().lower()
        if label not in labels:
            raise DatasetError(
                f"manifest {path} row {i + 1}: label {label!r} not in {list(labels)}"
            )
        audio = r.get("audio") or None
        apath = None
        if audio:
            apath = Path(audio)
            if not apath.is_absolute():
                apath = path.parent / apath
        ctx = r.get("context") or ()
        if isinstance(ctx, str):
            ctx = json.loads(ctx) if ctx.startswith("[") else (ctx,)
        text = r.get("text")
        samples.append(
            Sample(
                uid=str(r.get("id") or f"{path.stem}/{i}"),
                text=(text or None),
                label=label,
                audio_path=apath,
                group=str(r.get("group") or ""),
                dataset="manifest",
                context=tuple(ctx),
                dialogue=str(r.get("dialogue") or ""),
                speaker=str(r.get("speaker") or ""),
            )
        )
    return samples
