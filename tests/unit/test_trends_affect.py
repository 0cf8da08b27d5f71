"""Valence/arousal from the class probabilities and per-speaker trends (issue 17, items 2-3)."""

from __future__ import annotations

import jsonschema
import pytest

from emomon.services.affect import NRC_VAD_V1, valence_arousal
from emomon.services.events import load_schema
from emomon.services.trends import TrendWindow
from tests.integration.mosquitto_helpers import make_event


def test_one_hot_probabilities_give_the_lexicon_point():
    for label, (v, a) in NRC_VAD_V1.items():
        probs = dict.fromkeys(NRC_VAD_V1, 0.0) | {label: 1.0}
        assert valence_arousal(probs) == pytest.approx((2 * v - 1, a))


def test_mixture_is_the_weighted_mean_and_stays_in_range():
    probs = {"joy": 0.5, "sadness": 0.5}
    v, a = valence_arousal(probs)
    assert v == pytest.approx((0.980 + 0.052) - 1)  # 2 * mean - 1
    assert a == pytest.approx((0.824 + 0.288) / 2)
    assert valence_arousal({"anger": 0.999, "joy": 0.001})[0] < -0.6
    assert valence_arousal({"other": 1.0}) is None
    # unknown classes are left out and the rest renormalised
    assert valence_arousal({"joy": 0.4, "other": 0.6}) == pytest.approx(valence_arousal({"joy": 1}))


def test_events_publish_valence_and_arousal_within_the_schema():
    d = make_event("s", "A", 1, label="anger").to_dict()
    assert -1 <= d["valence"] <= 1 and 0 <= d["arousal"] <= 1
    assert d["valence"] < 0  # anger leads
    jsonschema.validate(d, load_schema())
    bad = d | {"valence": 1.5}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, load_schema())


def test_trend_window_shares_and_means():
    w = TrendWindow(window_s=10.0)
    evs = [
        make_event("s", "A", i, label=lab).to_dict()
        for i, lab in enumerate(["joy", "joy", "anger", "joy"])
    ]
    for i, e in enumerate(evs):
        e["start_s"], e["end_s"] = 4.0 * i, 4.0 * i + 3.0  # ends 3, 7, 11, 15
    trends = [w.add(e) for e in evs]
    last = trends[-1]
    # the first event ended at 3 s, more than 10 s before 15 s: out of the window
    assert last["events"] == 3 and last["from_s"] == 4.0 and last["to_s"] == 15.0
    share = last["share"]
    assert share["joy"] == pytest.approx(2 / 3, abs=1e-4)
    assert share["anger"] == pytest.approx(1 / 3, abs=1e-4)
    assert last["share"]["uncertain"] == 0 and sum(last["share"].values()) == pytest.approx(1)
    vals = [e["valence"] for e in evs[1:]]
    assert last["mean_valence"] == pytest.approx(sum(vals) / 3, abs=1e-4)


def test_no_speech_does_not_move_the_trend():
    w = TrendWindow(60.0)
    e = make_event("s", "A", 1).to_dict() | {"outcome": "no_speech", "label": "no_speech"}
    assert w.add(e) is None
