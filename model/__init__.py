"""emomon.model: the joint-vector fusion emotion model (text + audio), its data, training
and evaluation. No network I/O, no asyncio."""

from .errors import AudioError, CheckpointError, ConfigError, DatasetError, ModelError
from .inference import EmotionInput, EmotionModel, EmotionPrediction

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
