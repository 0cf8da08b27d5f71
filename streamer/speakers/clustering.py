"""Online speaker clustering: stable per-session labels for window embeddings."""

from __future__ import annotations

import numpy as np

from emomon.streamer.config import SpeakerConfig


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
