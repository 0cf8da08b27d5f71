"""The shared back-off of services/retry.py: what the Redis transport and the MQTT sink wait."""

from __future__ import annotations

import logging
import random

import pytest
from redis.backoff import ExponentialWithJitterBackoff

from emomon.services.publish.mqtt import ReconnectPolicy
from emomon.services.retry import ExponentialBackoff, RetryPolicy, default_backoff


def test_band_jitter_off_grows_by_the_multiplier_up_to_the_cap() -> None:
    b = ExponentialBackoff(initial_delay_s=0.25, max_delay_s=5.0, multiplier=3.0, jitter=0.0)
    assert [b.compute(n) for n in range(1, 6)] == pytest.approx([0.25, 0.75, 2.25, 5.0, 5.0])
    assert b.compute(0) == b.compute(1)  # no failure yet counts as the first retry


def test_band_jitter_scales_the_capped_delay_within_its_band() -> None:
    b = ExponentialBackoff(initial_delay_s=1.0, max_delay_s=8.0, jitter=0.25)
    assert b.delay_s(10, rand=lambda: 0.0) == pytest.approx(6.0)
    assert b.delay_s(10, rand=lambda: 0.5) == pytest.approx(8.0)
    assert b.delay_s(10, rand=lambda: 1.0) == pytest.approx(10.0)
    for attempt in range(1, 12):
        assert 0.75 * min(8.0, 2.0 ** (attempt - 1)) <= b.compute(attempt) <= 1.25 * 8.0


def test_full_jitter_draws_below_the_curve_and_caps_after_the_draw() -> None:
    b = ExponentialBackoff(initial_delay_s=0.1, max_delay_s=2.0, jitter=0.0, full_jitter=True)
    assert b.delay_s(1, rand=lambda: 0.0) == 0.0
    assert b.delay_s(1, rand=lambda: 0.5) == pytest.approx(0.05)
    assert b.delay_s(3, rand=lambda: 1.0) == pytest.approx(0.4)
    assert b.delay_s(8, rand=lambda: 0.5) == 2.0  # 0.5 * 12.8 s, capped
    assert all(0.0 <= b.compute(n) <= 2.0 for n in range(1, 40))


def test_redis_default_matches_redis_py_exponential_with_jitter() -> None:
    ours, theirs = default_backoff(), ExponentialWithJitterBackoff(cap=2.0, base=0.05)
    for failures in range(1, 12):
        random.seed(failures)
        expected = theirs.compute(failures)
        random.seed(failures)
        assert ours.compute(failures) == pytest.approx(expected)


def test_a_very_long_outage_stays_at_the_cap() -> None:
    assert default_backoff().delay_s(5000, rand=lambda: 0.3) == 2.0
    assert ReconnectPolicy(jitter=0.0).compute(5000) == 30.0
    assert ExponentialBackoff(initial_delay_s=0.0, jitter=0.0).compute(5000) == 0.0


def test_mqtt_reconnect_policy_is_the_shared_back_off() -> None:
    p = ReconnectPolicy()
    assert isinstance(p, ExponentialBackoff)
    assert (p.initial_delay_s, p.max_delay_s, p.multiplier, p.jitter) == (0.5, 30.0, 2.0, 0.2)
    assert 0.8 * 2.0 <= p.compute(3) <= 1.2 * 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay_s": -0.1},
        {"initial_delay_s": 5.0, "max_delay_s": 1.0},
        {"multiplier": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.0},
        {"full_jitter": True},  # with the default band jitter of 0.2
    ],
)
def test_nonsense_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]


def test_retry_policy_defaults_to_the_redis_back_off() -> None:
    assert RetryPolicy(logging.getLogger("t")).backoff == default_backoff()
