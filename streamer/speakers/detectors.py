"""The three turn detectors a :class:`~emomon.streamer.speakers.turns.TurnDetector` combines.

Each reads the open segment's audio (int16, sample 0 = the segment's start) at its own
resolution and proposes a cut, in samples; the coordinator decides, cuts, and tells each one
where the new segment begins (``restart`` / ``shift``):

* :class:`FrameTurns`: the segmentation network's frames say *where* the voice changed, a few
  tenths of a second after it did, but not *who* speaks;
* :class:`LongWindowTurns`: embedded and clustered windows say *who* speaks (reliable, but half
  a window late);
* :class:`ShortWindowTurns`: short windows compared with the known speakers' centroids find a
  change sooner once two speakers are known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from emomon.streamer.config import SpeakerConfig
from emomon.streamer.segmentation import SpeakerSegmentation, find_turn
from emomon.streamer.utterance import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from emomon.streamer.speakers.clustering import OnlineSpeakerClustering
    from emomon.streamer.speakers.embedding import SpeakerEmbedder

# A long-window cut is confirmed when the frames put a turn this close to it (the windows place
# a change only to within about half a window).
VERIFY_TOLERANCE_S = 0.6


def _samples(seconds: float) -> int:
    return int(seconds * SAMPLE_RATE_HZ)


def _float_audio(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


class FrameTurns:
    """Reads the newest ``turn_window_s`` of the segment every ``turn_hop_s``; a turn where the
    newest voice took over, once ``turn_min_new_s`` (and at most ``turn_max_new_s``, unless the
    reads came late) of it followed at least ``turn_min_before_s`` of another one."""

    def __init__(self, segmentation: SpeakerSegmentation, config: SpeakerConfig):
        self.segmentation = segmentation
        self.read_samples = _samples(config.turn_window_s)
        self.hop_samples = _samples(config.turn_hop_s)
        self.min_new_s = config.turn_min_new_s
        self.max_new_s = config.turn_max_new_s
        self.min_before_s = config.turn_min_before_s
        self._next_read_at = 0  # segment length at which the frames are read next
        self._last_read_at = 0  # segment length at which the frames were read last
        # The last read, keyed by (segment start, length): a long-window cut proposed in the
        # update that just read the frames is checked without a second pass over the same audio.
        self._last_read: tuple[tuple[float | None, int], tuple[int, float] | None] | None = None

    def restart(self) -> None:
        """A new segment begins (after a cut, or a new one from the segmenter)."""
        self._next_read_at = 0
        self._last_read_at = 0

    def _newest_turn(self, seg_start: float | None, pcm: np.ndarray) -> tuple[int, float] | None:
        """Where (sample) the newest voice in the last ``turn_window_s`` took over, with how
        much of it was heard (s); None when the frames show no such turn."""
        key = (seg_start, pcm.shape[0])
        if self._last_read is not None and self._last_read[0] == key:
            return self._last_read[1]
        seg = self.segmentation
        off = max(0, pcm.shape[0] - self.read_samples)
        probs = seg.frames([_float_audio(pcm[off:])])[0]
        turn = find_turn(probs, seg.classes, seg.frame_step)
        found = None
        if turn is not None and turn.new_s >= self.min_new_s and turn.before_s >= self.min_before_s:
            at = off + int(seg.frame_time(turn.onset) * SAMPLE_RATE_HZ)
            found = (at, turn.new_s) if 0 < at < pcm.shape[0] else None
        self._last_read = (key, found)
        return found

    def propose(self, seg_start: float | None, pcm: np.ndarray, late: bool = False) -> int | None:
        """Sample at which the newest voice took over, when it is time to read the frames;
        ``late``: take a turn seen only after ``turn_max_new_s`` too (no window will)."""
        n = pcm.shape[0]
        if n < self._next_read_at or n < (self.min_new_s + self.min_before_s) * SAMPLE_RATE_HZ:
            return None
        self._next_read_at = n + self.hop_samples
        read_before, self._last_read_at = self._last_read_at, n
        found = self._newest_turn(seg_start, pcm)
        if found is None:
            return None
        cut, new_s = found
        if (
            not late
            and new_s > self.max_new_s
            and cut + self.min_new_s * SAMPLE_RATE_HZ <= read_before
        ):
            # The previous read already held enough of the new voice and showed no turn: the
            # network needed more of it to tell the voices apart, a sign of an unsure turn that
            # would also close the utterance late; the windows, which name the voices, decide
            # those. (A turn first seen this late because the updates came late, under load,
            # is taken.)
            return None
        return cut

    def confirm(self, seg_start: float | None, cut: int, pcm: np.ndarray) -> int | None:
        """The frames' turn near a cut the windows propose (its more precise place), or None
        when the frames show no turn there."""
        found = self._newest_turn(seg_start, pcm)
        if found is None or abs(found[0] - cut) > VERIFY_TOLERANCE_S * SAMPLE_RATE_HZ:
            return None
        return found[0]


class LongWindowTurns:
    """``window_s`` windows every ``hop_s``, embedded and clustered; a turn when the last
    ``confirm`` of them name another speaker than the segment so far."""

    def __init__(
        self, embedder: SpeakerEmbedder, clustering: OnlineSpeakerClustering, config: SpeakerConfig
    ):
        self.embedder = embedder
        self.clustering = clustering
        self.window_samples = _samples(config.window_s)
        self.hop_samples = _samples(config.hop_s)
        self.confirm = config.confirm
        self.windows: list[tuple[int, str]] = []  # (window start sample, label)
        self._next_end = 0
        # every known speaker's centroid, as of the newest window (kept across segments)
        self.centroids: dict[str, np.ndarray] = {}

    def restart(self) -> None:
        self.windows = []
        self._next_end = self.window_samples

    def shift(self, cut: int, whole: bool) -> None:
        """Keep the windows after ``cut`` (``whole``: only those wholly after it, else those at
        most half before it), counted from the cut."""
        lead = 0 if whole else self.window_samples // 2
        self.windows = [(s - cut, lab) for s, lab in self.windows if s + lead >= cut]
        self._next_end -= cut

    def embed_new(self, pcm: np.ndarray, min_gap: int = 0) -> None:
        """Embed and label the windows that fit since the last call; with ``min_gap`` (samples)
        only the newest one, and only when it ends that long after the last embedded window."""
        win, starts = self.window_samples, []
        while self._next_end < win:  # after a cut the next window may begin before the segment
            self._next_end += self.hop_samples
        while self._next_end <= pcm.shape[0]:
            starts.append(self._next_end - win)
            self._next_end += self.hop_samples
        if starts and min_gap:
            last = self.windows[-1][0] if self.windows else None
            starts = [] if last is not None and starts[-1] - last < min_gap else starts[-1:]
        if not starts:
            return
        audio = _float_audio(pcm)
        embs = self.embedder.embed([audio[s : s + win] for s in starts])
        for s, e in zip(starts, embs, strict=True):
            self.windows.append((s, self.clustering.assign(e)))
        self.centroids = self.clustering.centroids()

    def older_labels(self) -> list[str]:
        """Labels of the windows before the newest ``confirm`` (which may be a new voice)."""
        return [lab for _, lab in self.windows[: -self.confirm]]

    def labels_before(self, cut: int) -> list[str]:
        """Labels of the windows mostly before sample ``cut``."""
        return [lab for s, lab in self.windows if s + self.window_samples // 2 < cut]

    def propose(self, current: str | None) -> tuple[int, str] | None:
        """(cut sample, new speaker) when the newest windows all name another speaker."""
        w = self.windows
        if current is None or len(w) <= self.confirm:
            return None
        tail = {lab for _, lab in w[-self.confirm :]}
        if len(tail) != 1 or current in tail:
            return None
        first_new = w[-self.confirm][0]
        last_old = w[-self.confirm - 1][0]
        # The change lies between the centres of the last "old" and first "new" windows.
        return int((first_new + last_old) / 2 + self.window_samples / 2), next(iter(tail))


class ShortWindowTurns:
    """``change_window_s`` windows ending at the newest audio every ``change_hop_s``, compared
    with the speakers' centroids; a turn when ``change_confirm`` in a row are nearer to one other
    speaker than to the current one by ``change_margin`` (cosine). Off when the window is 0."""

    def __init__(self, embedder: SpeakerEmbedder, config: SpeakerConfig):
        self.embedder = embedder
        self.window_samples = _samples(config.change_window_s)  # 0: off
        self.hop_samples = _samples(config.change_hop_s)
        self.confirm = config.change_confirm
        self.margin = config.change_margin
        self.windows: list[tuple[int, str, float]] = []  # (window end, nearest label, margin)
        self._next_end = 0

    @property
    def enabled(self) -> bool:
        return self.window_samples > 0

    def restart(self) -> None:
        self.windows = []
        self._next_end = self.window_samples

    def shift(self, cut: int, whole: bool) -> None:
        """As :meth:`LongWindowTurns.shift`."""
        lead = self.window_samples if whole else self.window_samples // 2
        self.windows = [(e - cut, lab, m) for e, lab, m in self.windows if e - lead >= cut]
        self._next_end -= cut

    def embed_new(self, pcm: np.ndarray, centroids: dict[str, np.ndarray]) -> None:
        win = self.window_samples
        while self._next_end < win:
            self._next_end += self.hop_samples
        ends = []
        while self._next_end <= pcm.shape[0]:
            ends.append(self._next_end)
            self._next_end += self.hop_samples
        # Only the newest ones can still confirm a change (after a stall, skip the backlog).
        ends = ends[-self.confirm :]
        if not ends or len(centroids) < 2:
            return
        audio = _float_audio(pcm)
        embs = self.embedder.embed([audio[e - win : e] for e in ends])
        labels = list(centroids)
        cents = np.stack([centroids[lab] for lab in labels])
        for e, emb in zip(ends, embs, strict=True):
            sims = cents @ emb
            order = np.argsort(-sims)
            self.windows.append((e, labels[order[0]], float(sims[order[0]] - sims[order[1]])))

    def older_labels(self) -> list[str]:
        """Labels of the windows before the newest ``change_confirm``."""
        return [lab for _, lab, _ in self.windows[: -self.confirm]]

    def labels_before(self, cut: int) -> list[str]:
        """Labels of the windows mostly before sample ``cut``."""
        return [lab for e, lab, _ in self.windows if e - self.window_samples // 2 < cut]

    def propose(self, current: str | None) -> tuple[int, str] | None:
        """(cut sample, new speaker) when the newest windows all lean to another speaker."""
        tail = self.windows[-self.confirm :]
        if current is None or len(tail) < self.confirm:
            return None
        new = {lab for _, lab, _ in tail}
        if len(new) != 1 or current in new or any(m < self.margin for *_, m in tail):
            return None
        # The first confirming window is (just) mostly the new voice: the change lies about half
        # a window before its end.
        return tail[0][0] - self.window_samples // 2, next(iter(new))
