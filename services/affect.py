"""Valence and arousal of an event, from its class probabilities (issue 17, item 2).

Each emotion class has a point in valence/arousal space; an event's valence and arousal are the
probability-weighted mean of those points. The points are the NRC Valence, Arousal, and
Dominance Lexicon v1.0 entries for the class names themselves:

    Saif M. Mohammad. 2018. Obtaining Reliable Human Ratings of Valence, Arousal, and Dominance
    for 20,000 English Words. In Proceedings of ACL 2018, Melbourne, pp. 174-184.
    https://saifmohammad.com/WebPages/nrc-vad.html

The lexicon scores each word 0 (lowest) to 1 (highest) by best-worst scaling of human ratings.
Valence is published here on -1..1 (``2 v - 1``: 0 is the lexicon's midpoint), arousal on 0..1
as in the lexicon. Why a published table rather than a learned regressor: the emotion model
gives probabilities for seven categories, and a fixed, cited mapping makes V/A reproducible and
explainable from the probabilities alone (docs/DASHBOARD.md, "Valence and arousal").

A leaf module: standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping

#: NRC VAD Lexicon v1.0 (valence, arousal) of each class name, both on the lexicon's 0..1 scale
NRC_VAD_V1: dict[str, tuple[float, float]] = {
    "neutral": (0.469, 0.184),
    "joy": (0.980, 0.824),
    "surprise": (0.875, 0.875),
    "anger": (0.167, 0.865),
    "sadness": (0.052, 0.288),
    "disgust": (0.052, 0.775),
    "fear": (0.073, 0.840),
}

VALENCE_RANGE = (-1.0, 1.0)
AROUSAL_RANGE = (0.0, 1.0)


def valence_arousal(probabilities: Mapping[str, float]) -> tuple[float, float] | None:
    """``(valence in -1..1, arousal in 0..1)``: the probability-weighted mean of the classes'
    points, or None when no class of the table has probability mass (a checkpoint with other
    labels). Classes missing from the table are left out and the rest renormalised."""
    mass = v = a = 0.0
    for label, p in probabilities.items():
        point = NRC_VAD_V1.get(label)
        if point is None or p <= 0:
            continue
        mass += p
        v += p * point[0]
        a += p * point[1]
    if mass <= 0:
        return None
    valence = min(1.0, max(-1.0, 2.0 * v / mass - 1.0))
    arousal = min(1.0, max(0.0, a / mass))
    return valence, arousal
