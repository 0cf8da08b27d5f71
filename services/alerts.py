"""Declarative alert rules over a speaker's events, each firing once per episode (issue 17, item 4).

A rule is one line, e.g.::

    anger >= 0.7 in 3 of last 5      # 3 of the speaker's last 5 utterances
    valence < -0.5 for 60 s          # every utterance of the last 60 s of stream time
    fear > 0.5                       # one utterance is enough (= in 1 of last 1)

The metric is an emotion's probability (``neutral joy surprise anger sadness disgust fear``,
0..1), ``valence`` (-1..1), ``arousal`` (0..1) or ``confidence`` (0..1); the operator one of
``>= > <= <`` (or ``≥ ≤``); the window ``in K of [the] last N [utterances]`` or ``for D s|min``.

Hysteresis: a rule *fires* when its condition starts to hold and then stays active, without
firing again, until the condition fails even with the threshold relaxed by ``margin``
(``alerts.hysteresis``, default 0.1): ``anger >= 0.7 in 3 of last 5`` clears only when fewer
than 3 of the last 5 utterances have anger >= 0.6. Only then can it fire again. ``no_speech``
events are not evaluated (they carry no emotion).

A leaf module: standard library only; the settings validate every rule at start with it.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from emomon.services.affect import NRC_VAD_V1, valence_arousal

EMOTIONS = tuple(NRC_VAD_V1)
METRICS = (*EMOTIONS, "valence", "arousal", "confidence")
_OPS = {"≥": ">=", "≤": "<="}
_RULE = re.compile(
    r"^\s*(?P<metric>[a-z_]+)\s*(?P<op>>=|<=|>|<|≥|≤)\s*(?P<thr>[-+]?\d+(?:\.\d+)?)\s*"
    r"(?:in\s+(?P<k>\d+)\s+of\s+(?:the\s+)?last\s+(?P<n>\d+)(?:\s+utterances?)?"
    r"|for\s+(?P<dur>\d+(?:\.\d+)?)\s*(?P<unit>s|sec|secs|seconds?|min|mins|minutes?))?\s*$"
)
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
MAX_LAST = 100


class AlertRuleError(ValueError):
    """A rule cannot be parsed or its numbers are out of range; the message names the rule."""


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One parsed rule. ``k of n`` for a count window; ``duration_s`` for a time window."""

    name: str
    text: str
    metric: str
    op: str
    threshold: float
    k: int = 1
    n: int = 1
    duration_s: float | None = None

    @property
    def upward(self) -> bool:
        return self.op in (">", ">=")

    def value(self, event: dict[str, Any]) -> float | None:
        """The metric of one published event (its JSON form), None when it has none."""
        if self.metric in ("valence", "arousal"):
            v = event.get(self.metric)
            if v is None:
                va = valence_arousal(event.get("probabilities") or {})
                v = None if va is None else va[0 if self.metric == "valence" else 1]
            return v
        if self.metric == "confidence":
            return float(event["confidence"])
        return float((event.get("probabilities") or {}).get(self.metric, 0.0))

    def holds(self, value: float, margin: float = 0.0) -> bool:
        """The condition, with the threshold moved by ``margin`` in the direction that makes it
        easier to hold (the hysteresis band)."""
        t = self.threshold - margin if self.upward else self.threshold + margin
        return {">": value > t, ">=": value >= t, "<": value < t, "<=": value <= t}[self.op]


def default_name(text: str) -> str:
    """A topic- and entity-safe name made from the rule text (``anger_ge_0.7_in_3_of_last_5``)."""
    t = text.strip().replace(">=", " ge ").replace("<=", " le ").replace(">", " gt ")
    t = t.replace("<", " lt ").replace("≥", " ge ").replace("≤", " le ").replace(".", "_")
    return _SLUG.sub("_", t).strip("_").lower()[:64] or "rule"


def parse_rule(text: str, name: str | None = None) -> AlertRule:
    """Parse one rule line; raise :class:`AlertRuleError` saying what is wrong and what is allowed."""
    m = _RULE.match(text or "")
    shown = f"alert rule {text!r}"
    if m is None:
        raise AlertRuleError(
            f"{shown} is not 'METRIC OP NUMBER [in K of last N | for D s]', "
            "e.g. 'anger >= 0.7 in 3 of last 5' or 'valence < -0.5 for 60 s'"
        )
    metric = m["metric"]
    if metric not in METRICS:
        raise AlertRuleError(f"{shown}: unknown metric {metric!r}; one of {', '.join(METRICS)}")
    threshold = float(m["thr"])
    lo, hi = (-1.0, 1.0) if metric == "valence" else (0.0, 1.0)
    if not lo <= threshold <= hi:
        raise AlertRuleError(
            f"{shown}: threshold {threshold:g} is outside {metric}'s {lo:g}..{hi:g}"
        )
    k = n = 1
    duration = None
    if m["k"] is not None:
        k, n = int(m["k"]), int(m["n"])
        if not 1 <= k <= n <= MAX_LAST:
            raise AlertRuleError(f"{shown}: need 1 <= K <= N <= {MAX_LAST} in 'in K of last N'")
    elif m["dur"] is not None:
        duration = float(m["dur"]) * (60.0 if m["unit"].startswith("min") else 1.0)
        if not 0 < duration <= 24 * 3600:
            raise AlertRuleError(f"{shown}: duration must be above 0 and at most 24 h")
    name = name or default_name(text)
    if _SLUG.search(name):
        raise AlertRuleError(f"{shown}: name {name!r} may hold only letters, digits, '_' and '-'")
    return AlertRule(
        name, text.strip(), metric, _OPS.get(m["op"], m["op"]), threshold, k, n, duration
    )


@dataclass
class _RuleState:
    """One rule's memory for one speaker."""

    active: bool = False
    recent: deque[tuple[bool, bool]] = field(default_factory=deque)  # (strict, relaxed)
    run_start_s: float | None = None  # duration rules: start of the current run of holds


class AlertEvaluator:
    """Every rule's state for one speaker; :meth:`update` returns the transitions an event caused."""

    def __init__(self, rules: tuple[AlertRule, ...], margin: float) -> None:
        self.rules = rules
        self.margin = margin
        self._state = {r.name: _RuleState(recent=deque(maxlen=r.n)) for r in rules}

    def active(self) -> list[str]:
        return [name for name, s in self._state.items() if s.active]

    def update(self, event: dict[str, Any]) -> list[tuple[AlertRule, str, float]]:
        """``(rule, 'firing' | 'cleared', value)`` for each rule whose state this event changed."""
        if event.get("outcome") == "no_speech":
            return []
        out: list[tuple[AlertRule, str, float]] = []
        for rule in self.rules:
            value = rule.value(event)
            if value is None:
                continue
            change = self._step(rule, self._state[rule.name], event, value)
            if change is not None:
                out.append((rule, change, value))
        return out

    def _step(
        self, rule: AlertRule, s: _RuleState, event: dict[str, Any], value: float
    ) -> str | None:
        strict, relaxed = rule.holds(value), rule.holds(value, self.margin)
        if rule.duration_s is None:
            s.recent.append((strict, relaxed))
            if not s.active and sum(st for st, _ in s.recent) >= rule.k:
                s.active = True
                return "firing"
            if s.active and sum(rl for _, rl in s.recent) < rule.k:
                s.active = False
                return "cleared"
            return None
        # duration rule: an unbroken run of utterances that hold, measured in stream time
        if s.active:
            if relaxed:
                return None
            s.active, s.run_start_s = False, None
            return "cleared"
        if not strict:
            s.run_start_s = None
            return None
        if s.run_start_s is None:
            s.run_start_s = float(event["start_s"])
        if float(event["end_s"]) - s.run_start_s >= rule.duration_s:
            s.active = True
            return "firing"
        return None
