"""Shared test setup: offline models, the shipped phone-call recording, small audio helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
CALL_WAV = DATA / "phone-call-2spk.wav"


@pytest.fixture(scope="session")
def call_pcm() -> np.ndarray:
    """The phone call as int16 16 kHz mono."""
    from emomon.streamer.sources.file import _decode, probe_channels

    return np.concatenate(list(_decode(CALL_WAV, probe_channels(CALL_WAV))), axis=1)[0]
