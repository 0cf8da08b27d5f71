import jsonschema
import pytest

from emomon.services.events import EmotionEvent, event_id_for, load_schema


def make_event(**kw):
    base = dict(
        session="call",
        speaker="speaker_1",
        utterance_id="call:0:000001",
        channel="0",
        start_s=1.0,
        end_s=2.0,
        label="joy",
        confidence=0.8,
        probabilities={"neutral": 0.1, "joy": 0.8, "surprise": 0.1},
        modalities=("text", "audio"),
        model_id="m",
        latency_ms=123.4,
        stage_ms={"asr": 100.0},
        text="hi",
    )
    base.update(kw)
    return EmotionEvent(**base)


def test_event_validates_against_schema_v1():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    d = make_event().to_dict()
    jsonschema.validate(d, schema)
    assert d["event_id"] == event_id_for("call:0:000001")
    assert EmotionEvent.from_dict(d).to_dict() == d


def test_text_is_omitted_when_withheld():
    d = make_event(text=None).to_dict()
    assert "text" not in d
    jsonschema.validate(d, load_schema())


@pytest.mark.parametrize(
    "bad", [{"label": "happy"}, {"confidence": 1.5}, {"modalities": ("video",)}]
)
def test_schema_rejects_bad_events(bad):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(make_event(**bad).to_dict(), load_schema())


def test_event_id_is_stable_and_distinct():
    assert event_id_for("a") == event_id_for("a") != event_id_for("b")
