"""Jitter buffer: ordering, the reorder window, and exact loss/late/duplicate/wrap-around counts."""

from __future__ import annotations

import random

import pytest

from emomon.streamer.sources.jitter import JitterBuffer

W = 0.06  # window, s


def released(jb: JitterBuffer[int], now: float, flush: bool = False) -> list[int]:
    return [item for _, item in jb.pop_ready(now, flush=flush)]


def test_in_order_released_immediately_after_the_start_window() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    jb.push(10, 10, now=0.0)
    assert (
        released(jb, 0.0) == []
    )  # the first release waits one window (reordering before packet 1)
    assert released(jb, W) == [10]
    for i, t in zip(range(11, 20), range(1, 10), strict=True):
        jb.push(i, i, now=W + t * 0.02)
        assert released(jb, W + t * 0.02) == [i]  # no added delay once running
    assert jb.stats.lost == jb.stats.late == jb.stats.duplicate == jb.stats.reordered == 0


def test_reorder_within_window_is_restored() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    jb.push(1, 1, 0.0)
    assert released(jb, W) == [1]
    jb.push(3, 3, 0.10)
    jb.push(4, 4, 0.11)
    assert released(jb, 0.12) == []  # waiting for 2
    jb.push(2, 2, 0.13)
    assert released(jb, 0.13) == [2, 3, 4]
    assert jb.stats.reordered == 1 and jb.stats.lost == 0


def test_reorder_before_the_first_packet() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    jb.push(5, 5, 0.0)
    jb.push(4, 4, 0.01)
    assert released(jb, W) == [4, 5]
    assert jb.stats.reordered == 1


def test_gap_given_up_after_window_then_late_arrival_is_late() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    jb.push(1, 1, 0.0)
    released(jb, W)
    jb.push(4, 4, 0.10)
    jb.push(5, 5, 0.12)
    assert released(jb, 0.10 + W - 0.001) == []
    assert released(jb, 0.10 + W) == [4, 5]
    assert jb.stats.lost == 2
    assert jb.next_deadline() is None
    assert not jb.push(2, 2, 0.2)  # too late now
    assert jb.stats.late == 1 and jb.stats.duplicate == 0


def test_duplicates_buffered_and_already_released() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    jb.push(1, 1, 0.0)
    assert not jb.push(1, 1, 0.001)  # while buffered
    released(jb, W)
    assert not jb.push(1, 1, 0.1)  # after release
    jb.push(2, 2, 0.1)
    released(jb, 0.1)
    assert jb.stats.duplicate == 2 and jb.stats.late == 0 and jb.stats.released == 2


def test_sequence_wrap_around() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    seqs = [65533, 65534, 65535, 0, 1, 2]
    jb.push(seqs[0], 0, 0.0)
    out = released(jb, W)
    for i, s in enumerate(seqs[1:], 1):
        jb.push(s, i, W + i * 0.02)
        out += released(jb, W + i * 0.02)
    assert out == list(range(6))
    assert jb.stats.lost == 0


def test_wrap_with_loss_and_reorder_across_the_boundary() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    jb.push(65534, 65534, 0.0)
    released(jb, W)
    jb.push(1, 1, 0.1)  # 65535 and 0 missing
    jb.push(65535, 65535, 0.11)  # one turns up (reordered across the wrap)
    assert released(jb, 0.12) == [65535]
    assert released(jb, 0.1 + W) == [1]  # 0 given up
    assert jb.stats.lost == 1 and jb.stats.reordered == 1


def test_flush_releases_everything_in_order() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    for s in (7, 9, 8, 12):
        jb.push(s, s, 0.0)
    assert released(jb, 0.0, flush=True) == [7, 8, 9, 12]
    assert jb.stats.lost == 2


def test_bounded_overflow_counted() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W, max_packets=4)
    jb.push(1, 1, 0.0)
    released(jb, W)
    for s in range(3, 10):  # 2 is missing, the buffer fills behind the gap
        jb.push(s, s, 0.1)
    assert len(jb) == 4 and jb.stats.overflow == 3


def test_sender_restart_followed_after_two_packets() -> None:
    jb: JitterBuffer[int] = JitterBuffer(W)
    jb.push(100, 100, 0.0)
    released(jb, W)
    assert not jb.push(40000, 40000, 0.1)  # wild jump: on probation
    assert jb.push(40001, 40001, 0.12)  # confirmed: restart
    assert released(jb, 0.12) == [40001]
    assert jb.stats.restarts == 1 and jb.stats.lost == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_network_counts_are_exact(seed: int) -> None:
    """Drop, duplicate and locally reorder (within the window) a stream crossing the 16-bit wrap:
    the buffer releases exactly the survivors in order and counts exactly what the 'network' did."""
    rng = random.Random(seed)
    start = 65536 - 300
    seqs = [(start + i) & 0xFFFF for i in range(600)]
    sent: list[tuple[float, int]] = []
    dropped = dup = 0
    for i, s in enumerate(seqs):
        t = i * 0.02
        if 0 < i < len(seqs) - 1 and rng.random() < 0.05:
            dropped += 1
            continue
        delay = rng.uniform(0, 0.03)  # < window: reordering only
        sent.append((t + delay, s))
        if rng.random() < 0.03:
            dup += 1
            sent.append((t + delay + rng.uniform(0, 0.1), s))
    sent.sort()
    jb: JitterBuffer[int] = JitterBuffer(W)
    out: list[int] = []
    for t, s in sent:
        jb.push(s, s, t)
        out += released(jb, t)
    out += released(jb, 1e9, flush=True)
    expected = [s for s in seqs if s in set(x for _, x in sent)]
    assert out == expected
    assert jb.stats.lost == dropped
    assert jb.stats.duplicate == dup
    assert jb.stats.late == 0
