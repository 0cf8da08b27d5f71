"""emomon.model: the emotion model (text + audio), its data, training and evaluation.
No network I/O, no asyncio.

Names are imported lazily: the leaf modules (``emomon.model.audio``, ``emomon.model.g711``)
that the streamer shares must not pull in torch or transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_NAMES = {
    "AudioError": ".errors",
    "CheckpointError": ".errors",
    "ConfigError": ".errors",
    "DatasetError": ".errors",
    "ModelError": ".errors",
    "EmotionInput": ".inference",
    "EmotionModel": ".inference",
    "EmotionPrediction": ".inference",
}

__all__ = [
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "ModelError",
    "EmotionInput",
    "EmotionModel",
    "EmotionPrediction",
]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import AudioError, CheckpointError, ConfigError, DatasetError, ModelError
    from .inference import EmotionInput, EmotionModel, EmotionPrediction


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
