"""``emomon replay FILE…``: recorded sessions through the pipeline; JSONL + timeline per file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emomon.services.commands.common import (
    CliError,
    Command,
    pipeline_errors,
    settings_from_args,
    setup_logging,
)
from emomon.services.commands.flags import add_common, add_flags, overrides
from emomon.services.commands.run import PIPELINE_FLAGS, _run
from emomon.services.commands.sessions import open_sources
from emomon.services.publish.jsonl import PerSessionJsonlSink


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="audio files (wav, flac, mp3, ogg, mp4, ...)"
    )
    p.add_argument(
        "--out", default="emomon-out", metavar="DIR", help="output folder (default: emomon-out)"
    )
    p.add_argument("--no-plot", action="store_true", help="skip the timeline PNG")
    add_flags(p, *PIPELINE_FLAGS)
    add_common(p)
    p.set_defaults(func=cmd_replay)


COMMAND = Command(
    "replay",
    "replay recorded sessions (one per file); writes JSONL and a timeline PNG",
    configure,
)


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    settings = settings_from_args(args, overrides(args, *PIPELINE_FLAGS))
    setup_logging(settings.log_level)
    sessions = open_sources(settings, [f"file:{f}" for f in args.files])
    out = Path(args.out)
    per_session = PerSessionJsonlSink(out)
    try:
        stats = asyncio.run(_run(settings, sessions, [per_session]))
    except pipeline_errors() as e:
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
