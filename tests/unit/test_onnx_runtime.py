"""The speaker networks in ONNX Runtime: exported once into the user cache, checked on load,
re-exported when the cached file is damaged, and PyTorch when no graph can be made."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from emomon.streamer.shared_models import ONNX_OPSET, onnx_forward


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(-1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOMON_CACHE_DIR", str(tmp_path))
    return tmp_path / "onnx"


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    net = _Tiny().eval()
    weights = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), weights)
    return net, weights


def test_export_is_cached_and_matches_the_network(cache, tiny):
    net, weights = tiny
    x = torch.randn(1, 2, 50)
    run = onnx_forward(net, x, "tiny", weights, {"x": {0: "b", 2: "t"}})
    (path,) = cache.glob("tiny-*.onnx")
    assert f"opset{ONNX_OPSET}" in path.name
    for b, t in ((1, 50), (4, 17)):  # other batch sizes and lengths than the example
        y = torch.randn(b, 2, t)
        with torch.inference_mode():
            want = net(y).numpy()
        assert np.allclose(run(y).numpy(), want, atol=1e-5)
    stamp = path.stat().st_mtime_ns
    onnx_forward(net, x, "tiny", weights, {"x": {0: "b", 2: "t"}})  # loads, no new export
    assert path.stat().st_mtime_ns == stamp
    assert not list(cache.glob("*.tmp"))


def test_a_damaged_cache_file_is_exported_again(cache, tiny):
    net, weights = tiny
    x = torch.randn(1, 2, 50)
    onnx_forward(net, x, "tiny", weights, {"x": {0: "b", 2: "t"}})
    (path,) = cache.glob("tiny-*.onnx")
    path.write_bytes(b"not an onnx file")
    run = onnx_forward(net, x, "tiny", weights, {"x": {0: "b", 2: "t"}})
    assert path.stat().st_size > 100
    with torch.inference_mode():
        assert np.allclose(run(x).numpy(), net(x).numpy(), atol=1e-5)


def test_other_weights_get_their_own_file(cache, tiny, tmp_path):
    net, weights = tiny
    x = torch.randn(1, 2, 50)
    onnx_forward(net, x, "tiny", weights, {"x": {0: "b", 2: "t"}})
    with torch.no_grad():
        net.conv.bias.add_(1.0)
    torch.save(net.state_dict(), weights)
    run = onnx_forward(net, x, "tiny", weights, {"x": {0: "b", 2: "t"}})
    assert len(list(cache.glob("tiny-*.onnx"))) == 2
    with torch.inference_mode():
        assert np.allclose(run(x).numpy(), net(x).numpy(), atol=1e-5)


def test_speaker_models_fall_back_to_torchscript_when_no_graph_can_be_made(
    cache, monkeypatch, caplog
):
    import emomon.streamer.segmentation as segmentation
    import emomon.streamer.shared_models as shared_models
    import emomon.streamer.speakers.embedding as embedding

    def fail(*_a, **_k):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(shared_models, "onnx_forward", fail)
    with caplog.at_level(logging.WARNING):
        emb = embedding.SpeakerEmbedder()
        seg = segmentation.SpeakerSegmentation()
    assert emb.runtime == "torchscript" and emb.jit
    assert seg.runtime == "torchscript" and seg.jit
    assert "CAM++ runs in PyTorch" in caplog.text and "no exporter here" in caplog.text
    assert "segmentation model runs in PyTorch" in caplog.text
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert emb.embed([audio]).shape == (1, 192)
    assert not cache.exists()
