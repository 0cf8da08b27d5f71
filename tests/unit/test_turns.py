"""Turn-change detection on real voices (CAM++ on two speakers of the shipped call)."""

from __future__ import annotations

import numpy as np
import pytest

from emomon.streamer.config import SpeakerConfig
from emomon.streamer.speakers import OnlineSpeakerClustering, SpeakerEmbedder, TurnDetector

SR = 16_000


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    from emomon.streamer.config import set_torch_threads

    set_torch_threads(1)  # as the pipeline runs it
    return SpeakerEmbedder()


@pytest.fixture(scope="module")
def turns(call_pcm) -> tuple[np.ndarray, list[float]]:
    """A B A B A B, 3 s each, no pause between turns (single-speaker stretches of the call)."""
    a = call_pcm[int(11.0 * SR) : int(14.0 * SR)]  # speaker90 alone (RTTM)
    b = call_pcm[int(22.0 * SR) : int(25.0 * SR)]  # speaker91 alone
    b2 = call_pcm[int(25.0 * SR) : int(27.7 * SR)]
    a2 = call_pcm[int(8.4 * SR) : int(9.9 * SR)]
    parts = [a, b, a2, b2, a, b]
    bounds = list(np.cumsum([p.shape[0] / SR for p in parts])[:-1])
    return np.concatenate(parts), bounds


def _run(
    det: TurnDetector, pcm: np.ndarray, step_s: float = 0.1, fine: bool = True
) -> list[tuple[float, float]]:
    """Feed the open segment as it grows; (cut time, time it was decided) for each cut."""
    start, cuts = 0.0, []
    n = int(step_s * SR)
    for end in range(n, pcm.shape[0] + 1, n):
        s0 = int(round(start * SR))
        cut = det.update(start, pcm[s0:end], fine)
        if cut is not None:
            cuts.append((cut, end / SR))
            start = cut
    return cuts


def _check(cuts, bounds, tol_s):
    # Before the second voice is heard, the first one may be split in two (labels are
    # provisional then): only cuts from the first checked change on count.
    found = [c for c, _ in cuts if c > bounds[0] - tol_s]
    for b in bounds:
        assert min(abs(f - b) for f in found) <= tol_s, (b, found)
    assert len(found) <= len(bounds) + 1, found  # no burst of false changes


@pytest.fixture(scope="module")
def long_only(embedder, turns):
    config = SpeakerConfig(num_speakers=2, window_s=1.2, hop_s=0.25, change_window_s=0)
    det = TurnDetector(embedder, OnlineSpeakerClustering(config), config)
    return det, _run(det, turns[0])


def test_long_windows_find_turns(long_only, turns):
    det, cuts = long_only
    _check(cuts, turns[1], 0.5)
    assert det.cuts["short"] == 0


def _two_resolutions(
    embedder: SpeakerEmbedder, segmentation=None, shed_hop_s: float = 0.5
) -> TurnDetector:
    config = SpeakerConfig(
        num_speakers=2,
        window_s=1.2,
        hop_s=0.25,
        change_window_s=0.6,
        change_hop_s=0.1,
        change_confirm=2,
        shed_hop_s=shed_hop_s,
    )
    return TurnDetector(embedder, OnlineSpeakerClustering(config), config, segmentation)


def test_short_windows_find_turns_sooner(embedder, turns, long_only):
    pcm, bounds = turns
    slow = long_only[1]
    det = _two_resolutions(embedder)
    fast = _run(det, pcm)
    _check(fast, bounds[1:], 0.5)  # the short path acts once two voices are known
    assert det.cuts["short"] >= 1

    def delays(cuts):
        return [decided - b for b in bounds[1:] for c, decided in cuts if abs(c - b) <= 0.5]

    assert np.mean(delays(fast)) < np.mean(delays(slow)) - 0.2, (delays(fast), delays(slow))


def test_under_load_the_short_windows_are_skipped_and_long_ones_still_find_turns(embedder, turns):
    pcm, bounds = turns
    det = _two_resolutions(embedder)
    before = embedder.windows
    cuts = _run(det, pcm, fine=False)  # the caller lags real time on every update
    sparse = embedder.windows - before
    _check(cuts, bounds, 0.5)
    assert det.cuts["short"] == 0 and det.short_skipped > 0
    # the long windows shed_hop_s (0.5 s) apart instead of every hop_s (0.25 s): about half
    every_hop = _two_resolutions(embedder, shed_hop_s=0.0)
    before = embedder.windows
    _check(_run(every_hop, pcm, fine=False), bounds, 0.5)
    dense = embedder.windows - before
    assert sparse <= 0.6 * dense, (sparse, dense)
    assert sparse >= pcm.shape[0] / SR / 0.5 * 0.7  # ... and not fewer than one per 0.5 s


@pytest.fixture(scope="module")
def segmentation():
    from emomon.streamer.stages import shared_segmentation

    return shared_segmentation()


def _with_frames(embedder, segmentation) -> TurnDetector:
    return _two_resolutions(embedder, segmentation)


@pytest.mark.parametrize("span", [(10.6, 14.2), (14.5, 17.9)])
def test_frames_veto_window_cuts_inside_one_voice(embedder, segmentation, call_pcm, span):
    """At the start of a session the clustering splits the one voice it has heard in two (it
    was told there are two people), so the long windows propose turns inside that voice; the
    frames show one voice there and drop them."""
    pcm = call_pcm[int(span[0] * SR) : int(span[1] * SR)]
    plain = _two_resolutions(embedder)
    assert _run(plain, pcm), "the windows alone cut this one voice"
    det = _with_frames(embedder, segmentation)
    assert _run(det, pcm) == []
    assert det.vetoed > 0


def test_frames_find_turns_as_soon_as_the_windows(embedder, segmentation, turns, long_only):
    pcm, bounds = turns
    det = _with_frames(embedder, segmentation)
    cuts = _run(det, pcm)
    _check(cuts, bounds[1:], 0.5)
    assert det.cuts["long"] == 0  # every change was found before the long windows could
    found = [(c, decided) for c, decided in cuts if c > bounds[0] - 0.5]
    delays = [decided - b for b in bounds[1:] for c, decided in found if abs(c - b) <= 0.5]
    assert max(delays) < 0.8, delays


def test_frames_take_turns_first_read_late_under_load(embedder, segmentation, turns):
    # Under load the segment grows by a second between updates: a turn is first read with
    # more than turn_max_new_s of the new voice, which the frames must still take (only turns
    # an earlier read could have seen, and did not, are left to the windows).
    pcm, bounds = turns
    det = _with_frames(embedder, segmentation)
    cuts = _run(det, pcm, step_s=1.0, fine=False)
    _check(cuts, bounds, 0.5)
    assert det.cuts["frames"] >= len(bounds) - 1, det.cuts


def test_with_frames_finding_turns_the_embeddings_only_name_speakers(embedder, segmentation, turns):
    """turns_from=frames (issue #16): the frames find the same turns, CAM++ embeds a window
    every name_hop_s to name who speaks, and no window proposes a cut."""
    pcm, bounds = turns
    config = SpeakerConfig(num_speakers=2, turns_from="frames", name_hop_s=1.0)
    det = TurnDetector(embedder, OnlineSpeakerClustering(config), config, segmentation)
    before = embedder.windows
    cuts = _run(det, pcm)
    _check(cuts, bounds[1:], 0.5)
    assert det.cuts["long"] == det.cuts["short"] == 0 and det.cuts["frames"] >= len(bounds) - 1
    # all windows: ~4 long + ~10 short per second of speech; naming: about one per second
    assert embedder.windows - before <= pcm.shape[0] / SR * 1.2
    # the cut-off parts are named, and not all alike
    labels = {det.finish(0.0, pcm[: int(bounds[0] * SR)])}
    for b0, b1 in zip(bounds, bounds[1:], strict=False):
        det.update(b0, pcm[int(b0 * SR) : int(b1 * SR)])
        labels.add(det.finish(b0, pcm[int(b0 * SR) : int(b1 * SR)]))
    assert len(labels) == 2, labels


def test_auto_names_only_under_load(embedder, segmentation, turns):
    """turns_from=auto: while the caller lags real time, CAM++ only names who speaks (one window
    per name_hop_s) and the frames find the turns; keeping up, every resolution works."""
    pcm, bounds = turns
    config = SpeakerConfig(num_speakers=2, turns_from="auto", name_hop_s=1.0)
    det = TurnDetector(embedder, OnlineSpeakerClustering(config), config, segmentation)
    before = embedder.windows
    cuts = _run(det, pcm, step_s=0.3, fine=False)
    _check(cuts, bounds[1:], 0.5)
    assert det.cuts["long"] == det.cuts["short"] == 0 and det.short_skipped > 0
    assert embedder.windows - before <= pcm.shape[0] / SR * 1.2
    keeping_up = TurnDetector(embedder, OnlineSpeakerClustering(config), config, segmentation)
    before = embedder.windows
    _run(keeping_up, pcm)
    assert embedder.windows - before > pcm.shape[0] / SR * 3  # long and short windows


def test_one_session_far_behind_makes_all_only_name_speakers_until_the_hold_expires():
    """Behind (lag > change_max_lag_ms) is per session and per update; far behind (> 4x) holds
    for every session of the process (they share its CPU) until LoadSignal.HOLD_S after."""
    from emomon.streamer.stages import LoadSignal

    load, hold = LoadSignal(), LoadSignal.HOLD_S
    assert load.level(10, 300, now=100.0) == (True, False)  # nobody lagged yet
    assert load.level(450, 300, now=100.0) == (False, False)  # session A lags a little
    assert load.level(5, 300, now=100.5) == (True, False)  # B keeps up: its own business
    assert load.level(1500, 300, now=200.0) == (False, True)  # A far behind: names only
    assert load.level(5, 300, now=201.0) == (True, True)  # ... B too, for the hold
    assert load.level(5, 300, now=200.0 + hold) == (True, True)
    assert load.level(5, 300, now=200.1 + hold) == (True, False)  # the hold ran out


def test_current_names_the_open_segment_only(embedder, turns):
    """What an early transcription of a clustered channel is filed under: the speaker the
    windows of the open segment name so far, and nothing for another segment."""
    pcm, bounds = turns
    det = _two_resolutions(embedder)
    first = pcm[: int(bounds[0] * SR)]  # one voice
    assert det.current(0.0) is None  # nothing seen yet
    # (told there are two people, the clustering may split this first voice: the open segment
    # then starts at the last cut)
    cuts = _run(det, first)
    start = cuts[-1][0] if cuts else 0.0
    who = det.current(start)
    assert who is not None
    assert who in det.long.centroids  # one of the speakers the clustering knows
    assert det.current(start + 5.0) is None  # not the open segment
