import numpy as np

from emomon.streamer.speakers import OnlineSpeakerClustering


def _voices(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n, dim))
    return rng, centers


def _sample(rng, c):
    e = c + rng.normal(scale=0.35, size=c.shape)
    return e / np.linalg.norm(e)


def test_known_speaker_count_gives_stable_labels():
    rng, centers = _voices(2)
    cl = OnlineSpeakerClustering(num_speakers=2)
    seq = [0] * 6 + [1] * 6 + [0] * 4 + [1] * 4
    labels = [cl.assign(_sample(rng, centers[i])) for i in seq]
    assert len(set(labels)) == 2
    # Before the second voice is heard, the first one is split in two (the labels are
    # provisional then); once both were heard, labels follow the voices.
    later = list(zip(seq[8:], labels[8:], strict=True))
    mapping = {}
    assert sum(mapping.setdefault(lab, i) == i for i, lab in later) >= len(later) - 1
    history = cl._votes
    assert len({(i, lab) for i, lab in zip(seq, history, strict=True)}) == 2  # history healed


def test_unknown_count_is_estimated_for_distinct_voices():
    rng, centers = _voices(3, seed=1)
    cl = OnlineSpeakerClustering(threshold=0.5)
    seq = [0] * 5 + [1] * 5 + [2] * 5 + [0, 1, 2] * 2
    labels = [cl.assign(_sample(rng, centers[i])) for i in seq]
    assert len(set(labels[-6:])) == 3


def test_provisional_until_enough_speech():
    cl = OnlineSpeakerClustering(provisional_s=4.0)
    assert cl.add_speech("speaker_1", 3.0) is True
    assert cl.add_speech("speaker_1", 1.5) is False
