"""The exception family of :mod:`emomon.model`.

Callers outside the package catch :class:`ModelError`; the subclasses say which
part failed so the message can tell the user what to do.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by :mod:`emomon.model`."""


class ConfigError(ModelError):
    """A model or training configuration is inconsistent."""


class CheckpointError(ModelError):
    """A checkpoint folder is missing, incomplete or does not match the code."""


class DatasetError(ModelError):
    """A dataset folder or manifest does not have the expected layout."""


class AudioError(ModelError):
    """An audio file or buffer cannot be decoded or is unusable."""


class EncoderError(ConfigError):
    """A frozen base encoder is not installed, or its files do not match their pinned hash."""
