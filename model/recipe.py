"""Which Whisper-frame recipe a checkpoint folder reads, from its JSON files alone.

Light on purpose (json only): the streamer asks it to make the ASR pass compute the frames
the emotion model expects (``asr.encoder_window = auto``) without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError

#: the shipped checkpoint's folder (mirrors ``model.checkpoint.DEFAULT_CHECKPOINT``)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"


def frames_recipe(folder: str | Path | None = None) -> str:
    """The audio expert's recipe when the folder uses text-led fusion (it has
    ``audio_expert.json`` and ``gate.json``), else the utterance network's ``whisper_window``."""
    folder = Path(folder) if folder is not None else DEFAULT_CHECKPOINT
    try:
        if (folder / "audio_expert.json").is_file() and (folder / "gate.json").is_file():
            return str(json.loads((folder / "audio_expert.json").read_text())["config"]["recipe"])
        return str(json.loads((folder / "config.json").read_text())["model"]["whisper_window"])
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{folder} is not an emomon checkpoint folder (no {Path(e.filename).name})"
        ) from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read the frame recipe of {folder}: {e}") from e
