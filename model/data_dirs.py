"""Where the corpora are: a command-line flag, else an environment variable.

No machine's paths live in the code. ``EMOMON_DATA_DIR`` names one folder holding ``meld/``,
``ravdess/``, ``tess/`` (and ``iemocap/``); ``EMOMON_<CORPUS>_DIR`` names one corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DatasetError

DATA_DIR_ENV = "EMOMON_DATA_DIR"
CORPORA = ("meld", "ravdess", "tess", "iemocap")


def corpus_env(corpus: str) -> str:
    return f"EMOMON_{corpus.upper()}_DIR"


def data_dir(corpus: str, given: str | Path | None = None) -> Path:
    """The folder of ``corpus``: ``given`` (its ``--<corpus>-dir`` flag), else
    ``$EMOMON_<CORPUS>_DIR``, else ``$EMOMON_DATA_DIR/<corpus>``."""
    if given:
        return Path(given).expanduser()
    one = os.environ.get(corpus_env(corpus))
    if one:
        return Path(one).expanduser()
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return Path(root).expanduser() / corpus
    raise DatasetError(
        f"no {corpus} folder given: pass --{corpus}-dir, or set {DATA_DIR_ENV} to a folder "
        f"with {corpus}/ in it (or {corpus_env(corpus)})"
    )


#: every environment variable :mod:`emomon.model` reads (not settings of the services: their
#: ``EMOMON_<SECTION>__<FIELD>`` loader must skip these)
MODEL_ENV_VARS: tuple[str, ...] = (
    "EMOMON_CACHE_DIR",
    DATA_DIR_ENV,
    *(corpus_env(c) for c in CORPORA),
)
