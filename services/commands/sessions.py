"""Opening the audio sources of a command and naming their sessions: one rule for every command.

A session id is ``--session`` when one source is given; with several sources each session is
``SESSION-<derived>``; without ``--session`` it is derived from the source (file stem, ``mic``,
``rtp-HOST:PORT``). Ids that still collide get ``-N`` appended (N = the source's position, from 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from emomon.services.commands.common import CliError
from emomon.services.settings import Settings
from emomon.streamer.sources.base import AudioSource, SourceError


def session_ids(session: str | None, specs: Sequence[str]) -> list[str]:
    """The session id of each source spec, by the rule in the module docstring."""
    from emomon.services.pipeline import default_session_id

    ids: list[str] = []
    for i, spec in enumerate(specs):
        sid = default_session_id(spec)
        if session:
            sid = session if len(specs) == 1 else f"{session}-{sid}"
        if sid in ids:
            sid = f"{sid}-{i + 1}"
        ids.append(sid)
    return ids


def open_sources(settings: Settings, specs: Sequence[str]) -> list[tuple[str, AudioSource]]:
    """Check every source before any model loads, so a bad path or port fails in a second.

    Network sources only try their ports here (``check_port``); they bind for real after the
    models warmed up (:meth:`Pipeline.run`), so no audio queues behind the warm-up (issue #15).
    """
    from emomon.services.pipeline import build_source

    sessions: list[tuple[str, AudioSource]] = []
    for sid, spec in zip(session_ids(settings.source.session, specs), specs, strict=True):
        try:
            src = build_source(spec, settings)
            check = getattr(src, "check_port", None)
            if check is not None:
                check()
        except SourceError as e:
            raise CliError(f"cannot open source: {e}") from e
        sessions.append((sid, src))
    return sessions
