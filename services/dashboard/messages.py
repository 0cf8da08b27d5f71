"""The shape of what the dashboard shows, checked before it enters the hub's state.

Messages from MQTT (any client the broker lets publish) and lines of a JSONL file are untrusted:
one retained trend with ``NaN`` in it made every snapshot unencodable, so no page could open
again, and a string where the page expects a number stopped its rendering. Each message is
parsed strictly (no ``NaN``/``Infinity``) and checked here against the fields the page reads;
one that fails is dropped and counted by the caller.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Name = Annotated[str, Field(min_length=1, max_length=256)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]


class _Shown(BaseModel):
    # extra fields are kept (the page ignores them); strict: "1" is not a number
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class ShownEvent(_Shown):
    session: Name
    speaker: Name
    event_id: Name
    start_s: Seconds
    end_s: Seconds
    label: Name
    confidence: Unit
    probabilities: dict[Annotated[str, Field(max_length=64)], Unit] = Field(max_length=64)
    outcome: str = "emotion"
    top_label: str | None = None
    text: str | None = None
    valence: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    arousal: Unit | None = None


class ShownTrend(_Shown):
    session: Name
    speaker: Name
    window_s: Annotated[float, Field(gt=0.0)]
    events: Annotated[int, Field(ge=0)]
    share: dict[Annotated[str, Field(max_length=64)], Unit] = Field(max_length=64)
    mean_valence: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    mean_arousal: Unit | None = None


class ShownAlert(_Shown):
    session: Name
    speaker: Name
    rule: Name
    state: Literal["firing", "cleared"]
    value: float
    at_s: Seconds


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes | bytearray) -> dict[str, Any]:
    """One JSON object, strictly (``NaN``/``Infinity`` refused).

    Raises:
        ValueError: not JSON, or not an object.
    """
    try:
        d = json.loads(text, parse_constant=_no_constants)
    except RecursionError:  # nested deeper than the decoder goes
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(d, dict):
        raise ValueError(f"a JSON {type(d).__name__}, not an object")
    return d


def checked(model: type[_Shown], d: dict[str, Any]) -> dict[str, Any]:
    """``d`` unchanged when it has the shape ``model`` describes.

    Raises:
        ValueError: it does not (the first problem, on one line).
    """
    try:
        model.model_validate(d)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "message"
        raise ValueError(f"{where}: {first['msg']}") from None
    return d
