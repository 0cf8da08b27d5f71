"""Alert rules (issue 17): parsing, firing once per episode, hysteresis, and a bad rule as a
one-line error at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emomon.services.alerts import AlertEvaluator, AlertRuleError, parse_rule
from emomon.services.dashboard_settings import AlertSettings, TrendSettings
from emomon.services.insights import Insights
from emomon.services.settings import SettingsError, load_settings

LABELS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")


def event(
    i: int,
    *,
    anger: float = 0.0,
    sadness: float = 0.0,
    start_s: float | None = None,
    dur_s: float = 4.0,
    outcome: str = "emotion",
    speaker: str = "A",
) -> dict:
    probs = dict.fromkeys(LABELS, 0.0)
    probs["anger"], probs["sadness"] = anger, sadness
    probs["neutral"] = max(0.0, 1.0 - anger - sadness)
    start = i * 5.0 if start_s is None else start_s
    label = max(probs, key=probs.__getitem__)
    from emomon.services.affect import valence_arousal

    v, a = valence_arousal(probs)
    return {
        "session": "s",
        "speaker": speaker,
        "event_id": f"ev-{speaker}{i}",
        "start_s": start,
        "end_s": start + dur_s,
        "label": label if outcome == "emotion" else outcome,
        "outcome": outcome,
        "confidence": probs[label],
        "probabilities": probs,
        "valence": v,
        "arousal": a,
    }


def run(rule: str, events: list[dict], margin: float = 0.1) -> list[tuple[int, str]]:
    ev = AlertEvaluator((parse_rule(rule),), margin)
    return [(i, change) for i, e in enumerate(events) for _, change, _ in ev.update(e)]


def test_parse_count_and_duration_rules():
    r = parse_rule("anger >= 0.7 in 3 of last 5")
    assert (r.metric, r.op, r.threshold, r.k, r.n, r.duration_s) == ("anger", ">=", 0.7, 3, 5, None)
    assert r.name == "anger_ge_0_7_in_3_of_last_5"
    r = parse_rule("valence < -0.5 for 60 s", "grim")
    assert (r.metric, r.op, r.threshold, r.duration_s, r.name) == (
        "valence",
        "<",
        -0.5,
        60.0,
        "grim",
    )
    assert parse_rule("fear ≥ 0.5 for 2 min").duration_s == 120.0
    assert parse_rule("arousal > 0.8 in 2 of the last 4 utterances").n == 4


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("angry >= 0.7", "unknown metric 'angry'"),
        ("anger >= 1.5", "outside anger's 0..1"),
        ("valence < -1.5 for 10 s", "outside valence's -1..1"),
        ("anger >= 0.7 in 6 of last 5", "1 <= K <= N"),
        ("anger is high", "is not 'METRIC OP NUMBER"),
        ("anger >= 0.7 for 0 s", "duration must be above 0"),
    ],
)
def test_bad_rules_say_what_is_wrong(text, says):
    with pytest.raises(AlertRuleError, match=".*") as e:
        parse_rule(text)
    assert says in str(e.value) and text in str(e.value)


def test_count_rule_fires_once_per_episode_and_clears_with_hysteresis():
    angry, calm, mild = 0.8, 0.05, 0.65  # mild: below 0.7 but within the 0.1 band
    seq = [
        calm,
        angry,
        angry,
        angry,
        angry,
        mild,
        mild,
        angry,
        calm,
        calm,
        calm,
        angry,
        angry,
        angry,
    ]
    changes = run("anger >= 0.7 in 3 of last 5", [event(i, anger=a) for i, a in enumerate(seq)])
    # fires at the third angry utterance; the mild ones keep it active (no second firing);
    # clears when fewer than 3 of the last 5 reach 0.6; fires again on a new episode
    assert changes == [(3, "firing"), (10, "cleared"), (13, "firing")]


def test_without_hysteresis_the_same_sequence_clears_sooner():
    seq = [0.8, 0.8, 0.8, 0.65, 0.65, 0.65]
    changes = run(
        "anger >= 0.7 in 3 of last 5", [event(i, anger=a) for i, a in enumerate(seq)], 0.0
    )
    assert changes == [(2, "firing"), (5, "cleared")]
    # with the 0.1 band the 0.65 utterances keep the episode going
    assert run("anger >= 0.7 in 3 of last 5", [event(i, anger=a) for i, a in enumerate(seq)]) == [
        (2, "firing")
    ]


def test_duration_rule_needs_an_unbroken_run_of_stream_time():
    sad = [event(i, sadness=0.9) for i in range(20)]  # every 5 s, valence well below -0.5
    assert sad[0]["valence"] < -0.5
    changes = run("valence < -0.5 for 60 s", sad)
    assert changes == [(12, "firing")]  # 12 * 5 + 4 - 0 = 64 s >= 60 s; 11 gives 59 s
    broken = sad[:8] + [event(8, sadness=0.0)] + [event(i, sadness=0.9) for i in range(9, 25)]
    assert run("valence < -0.5 for 60 s", broken) == [(21, "firing")]  # restarts at 45 s


def test_duration_rule_clears_outside_the_band_only():
    evs = [event(i, sadness=0.9) for i in range(14)]
    evs += [event(14, sadness=0.47)]  # valence above -0.5 but below -0.4: stays active
    evs += [event(15, sadness=0.0)]  # neutral: clears
    changes = run("valence < -0.5 for 60 s", evs)
    assert changes[0] == (12, "firing") and changes[1:] == [(15, "cleared")]
    assert -0.5 < evs[14]["valence"] < -0.4


def test_no_speech_events_are_not_evaluated():
    evs = [event(i, anger=0.9, outcome="no_speech") for i in range(5)]
    assert run("anger >= 0.7", evs) == []


def test_speakers_have_separate_state():
    ins = Insights(TrendSettings(), AlertSettings(rules=["anger >= 0.7 in 2 of last 2"]))
    a = [ins.update(event(i, anger=0.9, speaker="A")).alerts for i in range(2)]
    b = ins.update(event(9, anger=0.9, speaker="B")).alerts
    assert a[0] == () and a[1][0]["state"] == "firing" and a[1][0]["speaker"] == "A"
    assert b == ()


def test_bad_rule_in_settings_is_one_settings_error():
    with pytest.raises(SettingsError) as e:
        load_settings(overrides={"alerts": {"rules": ["anger >= 7 in 3 of last 5"]}}, environ={})
    msg = str(e.value)
    assert "\n" not in msg and "alerts.rules.0" in msg and "outside anger's 0..1" in msg


def test_duplicate_rule_names_are_refused():
    with pytest.raises(SettingsError, match="two alert rules are named 'x'"):
        load_settings(
            overrides={
                "alerts": {
                    "rules": [
                        {"when": "fear > 0.5", "name": "x"},
                        {"when": "anger > 0.5", "name": "x"},
                    ]
                }
            },
            environ={},
        )


def test_bad_rule_stops_emomon_run_with_one_line_before_anything_loads(tmp_path):
    cfg = tmp_path / "emomon.toml"
    cfg.write_text('[[alerts.rules]]\nwhen = "anger >= 0.7 in 3 of last"\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "emomon.services",
            "run",
            "--config",
            str(cfg),
            "--source",
            "file:/nonexistent.wav",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emomon: error: invalid configuration")
    assert "alert rule 'anger >= 0.7 in 3 of last'" in lines[0] and "Traceback" not in r.stderr
