"""The turn detector of one multi-speaker channel: three detectors and who decides."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from emomon.streamer.config import SpeakerConfig
from emomon.streamer.segmentation import SpeakerSegmentation
from emomon.streamer.speakers.clustering import OnlineSpeakerClustering
from emomon.streamer.speakers.detectors import FrameTurns, LongWindowTurns, ShortWindowTurns
from emomon.streamer.speakers.embedding import SpeakerEmbedder
from emomon.streamer.utterance import SAMPLE_RATE_HZ

# The segmenter cuts on VAD-frame boundaries, a few ms from where we asked.
SAME_START_S = 0.04


class TurnDetector:
    """Finds speaker changes inside an open segment of one multi-speaker channel.

    Three resolutions work together, one detector class each (:mod:`.detectors`); this class
    decides which proposal to take, cuts, and labels what was cut off:

    * *frames*: the segmentation network (:mod:`emomon.streamer.segmentation`) reads the newest
      ``turn_window_s`` of the segment every ``turn_hop_s`` and marks, every 17 ms, which
      local voice talks; a cut where the newest voice took over, once ``turn_min_new_s`` (and
      at most ``turn_max_new_s``, unless the reads came late) of it followed at least
      ``turn_min_before_s`` of another one.
      It finds *where* a change is, a few tenths of a second after it, but not *who* speaks.
      It also checks every cut the long windows propose: clustering noise (a voice split in
      two before the second person spoke, a window of one voice that lands in the other
      cluster) proposes cuts where the frames show one voice only; those are dropped
      (``vetoed``), and confirmed ones move to where the frames put the turn;
    * *long* windows (``window_s``, every ``hop_s``) are embedded and clustered: they decide who
      the speakers are (reliable, but a change shows only once a window is mostly the new
      voice, ``window_s / 2`` late); a cut when the last ``confirm`` of them name another
      speaker than the segment so far;
    * once two speakers are known, *short* windows ending at the newest audio
      (``change_window_s``, every ``change_hop_s``) are compared with the speakers' centroids:
      a cut as soon as ``change_confirm`` of them in a row are nearer to one other speaker than
      to the current one by ``change_margin`` (cosine). This finds a change about
      ``change_window_s / 2 + (change_confirm - 1) * change_hop_s`` after it happened.

    ``update(start_s, pcm, fine)`` is given the open segment's audio so far (called as it grows);
    it embeds the new windows and returns the stream time at which to cut, or ``None``. With
    ``fine=False`` (the caller is behind real time) the short windows, the costliest check, are
    skipped, and the long windows are embedded ``shed_hop_s`` apart (only the newest one that is
    due, so a backlog is not embedded window by window): under load the detector keeps the
    frames and sparser long windows instead of falling further behind. ``finish(start_s, pcm)`` labels a closed segment from its windows (majority vote).

    With ``turns_from = "frames"`` (and the segmentation network on) the frames alone find turns:
    the long windows, embedded only every ``name_hop_s``, name who speaks and propose no cut,
    and there are no short windows, so CAM++ runs a few times per segment instead of a dozen
    times a second. ``"auto"`` does that only far behind real time (``far_behind``; by
    default whenever not ``fine``) and otherwise works as ``"all"``.
    """

    def __init__(
        self,
        embedder: SpeakerEmbedder,
        clustering: OnlineSpeakerClustering,
        config: SpeakerConfig,
        segmentation: SpeakerSegmentation | None = None,
    ):
        self.embedder = embedder
        self.clustering = clustering
        self.frames = FrameTurns(segmentation, config) if segmentation is not None else None
        self.names_only = self.frames is not None and config.turns_from == "frames"
        self.auto = self.frames is not None and config.turns_from == "auto"
        self.name_gap = int(config.name_hop_s * SAMPLE_RATE_HZ)
        self.shed_gap = int(config.shed_hop_s * SAMPLE_RATE_HZ)
        if self.names_only:  # windows name speakers only: fewer of them, no short ones
            config = replace(config, hop_s=config.name_hop_s, change_window_s=0.0)
        self.long = LongWindowTurns(embedder, clustering, config)
        self.short = ShortWindowTurns(embedder, config)
        self._seg_start: float | None = None
        self._current: str | None = None  # who speaks in the open segment, once known
        # (start, label) of the part cut off last; label None: its windows did not tell
        self._closed: tuple[float, str | None] | None = None
        self.cuts = {"frames": 0, "long": 0, "short": 0}  # turn changes found by each resolution
        self.short_skipped = 0  # updates whose short windows were skipped under load
        self.vetoed = 0  # window cuts the frames did not confirm

    def _reset(self, start_s: float) -> None:
        self._seg_start = start_s
        self.long.restart()
        self.short.restart()
        if self.frames is not None:
            self.frames.restart()
        self._current = None

    def _same_segment(self, start_s: float) -> bool:
        return self._seg_start is not None and abs(self._seg_start - start_s) < SAME_START_S

    def _who(self) -> str | None:
        """The open segment's speaker, from its own windows (the newest ones may be a new voice)."""
        older_long = self.long.older_labels()
        if older_long:
            return _majority(older_long)
        older_short = self.short.older_labels()
        if len(older_short) >= 2:
            return _majority(older_short)
        return self._current  # right after a cut: the voice that caused it, if known

    def _before(self, cut: int, current: str | None) -> str | None:
        """Who spoke in the open segment before sample ``cut``, from the windows there."""
        labels = self.long.labels_before(cut) or self.short.labels_before(cut)
        return _majority(labels) if labels else current

    def _cut(
        self, start_s: float, cut: int, before: str | None, after: str | None, kind: str
    ) -> float | None:
        # The part before the cut is labelled now from its own windows (finish() returns it);
        # the new segment starts at the cut and keeps the windows that lie (mostly) after it.
        # A cut the windows placed is known to within about half a window; one the frames
        # placed is exact, and the new segment keeps only windows wholly of the new voice (a
        # window across the turn would name the earlier voice and propose the same turn again).
        if after is not None and before == after:
            self._current = after  # the windows before the cut already name the "new" voice
            return None
        self._closed = (start_s, before)
        self.long.shift(cut, whole=kind == "frames")
        self.short.shift(cut, whole=kind == "frames")
        if self.frames is not None:
            self.frames.restart()
        self._current = after
        self._seg_start = start_s + cut / SAMPLE_RATE_HZ
        self.cuts[kind] += 1
        return self._seg_start

    def update(
        self, start_s: float, pcm: np.ndarray, fine: bool = True, far_behind: bool | None = None
    ) -> float | None:
        if not self._same_segment(start_s):
            self._reset(start_s)
        # far behind (by default: whenever not fine): with "auto" the windows only name who speaks
        naming = self.auto and (not fine if far_behind is None else far_behind)
        # behind: the long windows at least shed_hop_s apart, the newest first (no backlog)
        self.long.embed_new(pcm, self.name_gap if naming else 0 if fine else self.shed_gap)
        current = self._who()
        if self.frames is not None:
            # when the windows only name speakers, the frames also take turns they see late
            cut = self.frames.propose(self._seg_start, pcm, late=self.names_only or naming)
            if cut is not None:
                return self._cut(start_s, cut, self._before(cut, current), None, "frames")
        if self.names_only or naming:
            self.short_skipped += naming and self.short.enabled
            return None
        proposal = self.long.propose(current)
        if proposal is not None:
            cut, new = proposal
            if self.frames is not None:
                cut = self.frames.confirm(self._seg_start, cut, pcm) or 0
                self.vetoed += not cut
            if 0 < cut < pcm.shape[0]:
                return self._cut(start_s, cut, self._before(cut, current), new, "long")
        if not fine:  # behind real time: the short windows are an accelerator, skip them
            self.short_skipped += self.short.enabled
            return None
        if not self.short.enabled:
            return None
        self.short.embed_new(pcm, self.long.centroids)
        current = self._who()
        proposal = self.short.propose(current)
        if proposal is not None:
            cut, new = proposal
            if 0 < cut < pcm.shape[0]:
                return self._cut(start_s, cut, self._before(cut, current), new, "short")
        return None

    def current(self, start_s: float) -> str | None:
        """Who speaks in the open segment that began at ``start_s``, as its windows tell so far
        (None: not known yet, or another segment)."""
        return self._who() if self._same_segment(start_s) else None

    def finish(self, start_s: float, pcm: np.ndarray) -> str:
        """Label of a closed segment: majority of its windows, or one embedding if it is short."""
        if self._closed is not None and abs(self._closed[0] - start_s) < SAME_START_S:
            label = self._closed[1]
            self._closed = None
            # A part cut off before any window told who spoke in it: embed it as a whole
            # (the open segment after the cut keeps its state).
            return label if label is not None else self._label_audio(pcm)
        if not self._same_segment(start_s):
            self._reset(start_s)
        if not self.long.windows:
            self.long.embed_new(pcm)
        # Windows seen while the segment was open already tell who spoke: no new embedding on
        # the latency path once speech has ended.
        labels = [lab for _, lab in self.long.windows] or [lab for _, lab, _ in self.short.windows]
        current = self._current
        self._seg_start = None
        if labels:
            return _majority(labels)
        if current is not None:
            return current
        return self._label_audio(pcm)

    def _label_audio(self, pcm: np.ndarray) -> str:
        """One embedding of a segment too short for a window of its own."""
        audio = pcm.astype(np.float32) / 32768.0
        if audio.shape[0] < SAMPLE_RATE_HZ // 4:
            audio = np.pad(audio, (0, SAMPLE_RATE_HZ // 4 - audio.shape[0]))
        emb = self.embedder.embed([audio])[0]
        # Too short to add to the clustering reliably: join the nearest speaker, if any yet.
        return self.clustering.nearest_label(emb) or self.clustering.assign(emb)


def _majority(labels: list[str]) -> str:
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return max(counts, key=lambda k: (counts[k], -labels.index(k)))
