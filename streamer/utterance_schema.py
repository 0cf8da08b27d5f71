"""The schema every ``Utterance`` header is checked against when it is read from another process.

A stream entry is input from the network: well-formed JSON with the wrong *types* (a number where
an id belongs, ``NaN`` for a time, a megabyte string as a stage timing) used to pass the old
field-name check and break the worker or its sinks later (issue 18, item 1). The pydantic model
below states types, ranges and sizes once; :func:`Utterance.from_wire` runs it before building
anything large. Limits are generous multiples of what the pipeline produces (``max_utterance_s``
is at most 30 s), so a real utterance never meets them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

SAMPLE_RATE_HZ = 16_000
MAX_HEADER_BYTES = 256 * 1024  # the JSON header: text, ids and timings, never audio
MAX_PCM_SAMPLES = 60 * SAMPLE_RATE_HZ  # twice the largest max_utterance_s the settings allow
MAX_TEXT_CHARS = 20_000
MAX_ID_CHARS = 256  # session, speaker, channel and utterance ids
MAX_TIMINGS = 32  # stage names in ``timings``
MAX_TIMING_KEY_CHARS = 64

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
TimingKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TIMING_KEY_CHARS)]


class UtteranceHeader(BaseModel):
    """The JSON header of the utterance wire format, as the decoder accepts it.

    Strict: no coercion (``12345`` is not a speaker name, ``"1.5"`` is not a time); unknown
    fields are refused like the dataclass constructor refused them before.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    session: Id
    speaker: Id
    channel: Id
    utterance_id: Id
    start_s: Seconds
    end_s: Seconds
    end_wall: Seconds
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] = ""
    language: Annotated[str, StringConstraints(max_length=16)] | None = None
    asr_confidence: Annotated[float, Field(allow_inf_nan=False)] | None = None
    speaker_provisional: bool = False
    origin_wall: Seconds | None = None  # wall-clock time of session time 0 (issue #15)
    live: bool = True  # end_wall is an arrival time (False: a faster-than-real-time replay)
    no_speech: bool = False
    timings: Annotated[dict[TimingKey, Seconds], Field(max_length=MAX_TIMINGS)] = Field(
        default_factory=dict
    )
    pcm_samples: Annotated[int, Field(ge=0, le=MAX_PCM_SAMPLES)]
    sample_rate_hz: Literal[16000]

    @model_validator(mode="after")
    def _end_not_before_start(self) -> UtteranceHeader:
        if self.end_s < self.start_s:
            raise ValueError(f"end_s {self.end_s} is before start_s {self.start_s}")
        return self


def _loc_part(p: str | int) -> str:
    # A dict key in the path is the sender's text: quote anything odd and keep it short.
    return p if isinstance(p, str) and p.isidentifier() and len(p) <= 40 else ascii(p)[:40]


def one_line(err: ValidationError, limit: int = 3) -> str:
    """A short reason from pydantic's errors: ``field: message`` for the first few, no input echo."""
    parts = []
    for e in err.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(_loc_part(p) for p in e["loc"]) or "entry"
        parts.append(f"{where}: {e['msg']}".replace("\n", " "))
    more = err.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_ID_CHARS",
    "MAX_PCM_SAMPLES",
    "MAX_TEXT_CHARS",
    "MAX_TIMINGS",
    "UtteranceHeader",
    "one_line",
]
