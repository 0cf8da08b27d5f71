import numpy as np
import pytest

from emomon.streamer.config import SpeakerConfig
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
    cl = OnlineSpeakerClustering(SpeakerConfig(num_speakers=2, similarity_threshold=0.75))
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
    cl = OnlineSpeakerClustering(SpeakerConfig(similarity_threshold=0.5))
    seq = [0] * 5 + [1] * 5 + [2] * 5 + [0, 1, 2] * 2
    labels = [cl.assign(_sample(rng, centers[i])) for i in seq]
    assert len(set(labels[-6:])) == 3


def test_provisional_until_enough_speech():
    cl = OnlineSpeakerClustering(SpeakerConfig(provisional_s=4.0, similarity_threshold=0.75))
    assert cl.add_speech("speaker_1", 3.0) is True
    assert cl.add_speech("speaker_1", 1.5) is False


def test_concurrent_embeddings_share_one_pass_and_match_single_calls(call_pcm):
    """Sessions asking for CAM++ windows at the same time are embedded in one batch."""
    import threading
    import time

    from emomon.streamer.stages import shared_embedder

    emb = shared_embedder()
    audio = call_pcm.astype(np.float32) / 32768
    wins = [audio[int(s * 16000) : int(s * 16000) + 9600] for s in (7.6, 11.0, 15.0)]
    alone = [emb.embed([w])[0] for w in wins]
    got: dict[int, np.ndarray] = {}
    passes = emb.passes
    shared = emb._passes
    with shared._lock:  # a pass is running: the three requests queue up behind it
        threads = [
            threading.Thread(target=lambda i=i: got.__setitem__(i, emb.embed([wins[i]])[0]))
            for i in range(3)
        ]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while len(shared._waiting) < 3 and time.time() < deadline:
            time.sleep(0.005)
        assert len(shared._waiting) == 3
    for t in threads:
        t.join(10)
    assert emb.passes == passes + 1  # one forward pass for the three of them
    for i in range(3):
        assert np.allclose(got[i], alone[i], atol=1e-5)
    assert float(alone[0] @ alone[1]) < 0.9  # Sheila vs Diane: not a constant output


@pytest.mark.parametrize(("runtime", "kind"), [("auto", "onnx"), ("torch", "torchscript")])
def test_optimised_embedder_matches_the_eager_network(call_pcm, runtime, kind):
    """The pipeline's CAM++ runs in ONNX Runtime (or, with speakers.runtime=torch, as a traced,
    frozen graph); either must give the eager network's embeddings for every window length and
    batch size the detector uses."""
    from emomon.streamer.speakers import SpeakerEmbedder
    from emomon.streamer.stages import shared_embedder

    fast, eager = shared_embedder(runtime), SpeakerEmbedder(jit=False)
    assert fast.runtime == kind and eager.runtime == "eager"
    audio = call_pcm.astype(np.float32) / 32768
    for seconds, starts in (
        (0.25, (7.6,)),
        (0.6, (7.6, 11.0, 15.0)),
        (1.2, (9.0, 22.5)),
        (3.1, (23.0,)),
    ):
        n = int(seconds * 16000)
        wins = [audio[int(s * 16000) : int(s * 16000) + n] for s in starts]
        a, b = fast.embed(wins), eager.embed(wins)
        assert a.shape == (len(wins), 192)
        assert np.allclose(a, b, atol=1e-4), (seconds, float(np.abs(a - b).max()))
