"""``EmotionEvent``: what emomon publishes, one per utterance per speaker (schema v2).

The JSON Schema of the published form lives in ``services/schemas/emotion_event.v2.json``; a
test validates real events against it. Additive changes keep the version; breaking ones bump it.

v2 (2026-12): ``label`` may also be ``"uncertain"`` (confidence below ``worker.min_confidence``)
or ``"no_speech"`` (no transcript and hardly any voiced audio); ``outcome`` says which of
``emotion | uncertain | no_speech`` it is and ``top_label`` always names the likeliest class.
A v1 consumer that reads ``top_label`` where it read ``label`` sees what it saw before.
Additive (issue 17): ``valence`` (-1..1) and ``arousal`` (0..1), derived from ``probabilities``
(:mod:`emomon.services.affect`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from emomon.services.affect import valence_arousal

EVENT_SCHEMA_VERSION = 2
OUTCOMES = ("emotion", "uncertain", "no_speech")


def event_id_for(utterance_id: str) -> str:
    """Stable event id derived from the utterance id, so consumers can drop redelivered duplicates."""
    return "ev-" + hashlib.sha1(utterance_id.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class EmotionEvent:
    session: str
    speaker: str
    utterance_id: str
    channel: str
    start_s: float
    end_s: float
    label: str
    confidence: float
    probabilities: dict[str, float]
    modalities: tuple[str, ...]
    model_id: str
    latency_ms: float  # end of speech -> event handed to the sinks
    stage_ms: dict[str, float] = field(default_factory=dict)
    text: str | None = None  # None when text is withheld (--no-text)
    language: str | None = None
    speaker_provisional: bool = False
    context_turns: int = 0  # earlier turns of the session the context model read
    outcome: str = "emotion"  # emotion | uncertain | no_speech (then label is that word)
    top_label: str = ""  # the likeliest class, whatever the outcome ("" = label)
    emitted_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds")
    )
    schema_version: int = EVENT_SCHEMA_VERSION
    # Not published: the turn memory the model left for later turns' context (fp16 bytes);
    # the worker stores it in the session's context store.
    memory: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def event_id(self) -> str:
        return event_id_for(self.utterance_id)

    @property
    def affect(self) -> tuple[float, float] | None:
        """(valence -1..1, arousal 0..1) derived from ``probabilities`` (:mod:`..affect`)."""
        return valence_arousal(self.probabilities)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "session": self.session,
            "speaker": self.speaker,
            "speaker_provisional": self.speaker_provisional,
            "utterance_id": self.utterance_id,
            "channel": self.channel,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "label": self.label,
            "outcome": self.outcome,
            "top_label": self.top_label or self.label,
            "confidence": round(self.confidence, 4),
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
            "modalities": list(self.modalities),
            "model_id": self.model_id,
            "latency_ms": round(self.latency_ms, 1),
            "stage_ms": {k: round(v, 1) for k, v in self.stage_ms.items()},
            "context_turns": self.context_turns,
            "emitted_at": self.emitted_at,
        }
        if self.text is not None:
            d["text"] = self.text
        if self.language is not None:
            d["language"] = self.language
        if (va := self.affect) is not None:  # additive (issue 17): derived, so not in from_dict
            d["valence"], d["arousal"] = round(va[0], 4), round(va[1], 4)
        return d

    def __post_init__(self) -> None:
        # JSON has no NaN/Infinity: a non-finite number here is a bug upstream (the wire decoder
        # refuses such utterances), so it is stopped where the event is built, not published.
        floats = {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "confidence": self.confidence,
            "latency_ms": self.latency_ms,
        }
        floats.update({f"probabilities.{k}": v for k, v in self.probabilities.items()})
        floats.update({f"stage_ms.{k}": v for k, v in self.stage_ms.items()})
        bad = [k for k, v in floats.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"EmotionEvent with non-finite {', '.join(bad[:5])}")

    def to_json(self) -> str:
        """Strict JSON (``allow_nan=False``): what the JSONL and MQTT sinks write."""
        return json.dumps(
            self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmotionEvent:
        return cls(
            session=d["session"],
            speaker=d["speaker"],
            utterance_id=d["utterance_id"],
            channel=d["channel"],
            start_s=d["start_s"],
            end_s=d["end_s"],
            label=d["label"],
            confidence=d["confidence"],
            probabilities=dict(d["probabilities"]),
            modalities=tuple(d["modalities"]),
            model_id=d["model_id"],
            latency_ms=d["latency_ms"],
            stage_ms=dict(d.get("stage_ms", {})),
            text=d.get("text"),
            language=d.get("language"),
            speaker_provisional=d.get("speaker_provisional", False),
            context_turns=int(d.get("context_turns", 0)),
            outcome=str(d.get("outcome", "emotion")),
            top_label=str(d.get("top_label", d["label"])),
            emitted_at=d["emitted_at"],
            schema_version=d["schema_version"],
        )


def load_schema(name: str = "emotion_event.v2.json") -> dict[str, Any]:
    """Load one of the published JSON Schemas shipped in ``emomon.services.schemas``."""
    return json.loads(resources.files("emomon.services.schemas").joinpath(name).read_text())
