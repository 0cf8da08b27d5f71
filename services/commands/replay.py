"""``emomon replay FILE…``: recorded sessions through the pipeline; JSONL + timeline per file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from emomon.services.cli import CliError, settings_from_args, setup_logging
from emomon.services.commands.run import add_pipeline_flags, open_sources, pipeline_overrides
from emomon.services.publish.base import SinkError
from emomon.services.publish.jsonl import PerSessionJsonlSink
from emomon.services.worker import WorkerError
from emomon.streamer.shared_models import SpeakerModelError
from emomon.streamer.sources.base import SourceError
from emomon.streamer.transcriber import TranscriberError


def register(
    sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "replay", help="replay recorded sessions (one per file); writes JSONL and a timeline PNG"
    )
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="audio files (wav, flac, mp3, ogg, mp4, ...)"
    )
    p.add_argument(
        "--out", default="emomon-out", metavar="DIR", help="output folder (default: emomon-out)"
    )
    p.add_argument("--no-plot", action="store_true", help="skip the timeline PNG")
    add_pipeline_flags(p)
    add_common(p)
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from emomon.services.commands.run import _run

    settings = settings_from_args(args, pipeline_overrides(args))
    setup_logging(settings.log_level)
    sessions = open_sources(settings, [f"file:{f}" for f in args.files])
    out = Path(args.out)
    per_session = PerSessionJsonlSink(out)
    try:
        stats = asyncio.run(_run(settings, sessions, [per_session]))
    except (SourceError, SinkError, WorkerError, TranscriberError, SpeakerModelError) as e:
        raise CliError(str(e)) from e
    if stats is None:
        return 130
    for sid, _ in sessions:
        events = [e for e in stats.events_list if e.session == sid]
        note = f"{len(events)} events"
        if events:
            note += f" -> {per_session.path_for(sid)}"
            if not args.no_plot:
                from emomon.services.publish.timeline import write_timeline

                png = write_timeline(events, out / f"{sid}.timeline.png", title=sid)
                note += f", {png}"
        print(f"emomon: {sid}: {note}", file=sys.stderr)
    return 0
