"""``emomon run``: everything in one process — sources in, per-speaker emotion events out."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from emomon.services.commands.common import (
    CliError,
    Command,
    pipeline_errors,
    settings_from_args,
    setup_logging,
)
from emomon.services.commands.flags import (
    DASHBOARD,
    MODEL,
    MQTT,
    RTP,
    SESSION,
    SINKS,
    SOURCE,
    STREAMER,
    FlagGroup,
    add_common,
    add_flags,
    overrides,
)
from emomon.services.commands.sessions import open_sources
from emomon.services.publish.base import Sink
from emomon.services.settings import Settings
from emomon.services.signals import install_stop_handlers
from emomon.streamer.sources.base import AudioSource

log = logging.getLogger("emomon.run")

#: the settings flags ``run`` and ``replay`` share (``run`` adds --session and --sdp)
PIPELINE_FLAGS: tuple[FlagGroup, ...] = (SOURCE, STREAMER, MODEL, SINKS, MQTT, DASHBOARD)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SPEC",
        help="file:PATH | mic[:DEVICE] | rtp://HOST:PORT (repeatable: one session each)",
    )
    add_flags(p, SESSION, RTP, *PIPELINE_FLAGS)
    add_common(p)
    p.set_defaults(func=cmd_run)


COMMAND = Command("run", "run the whole pipeline in one process (embedded mode)", configure)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.source:
        raise CliError(
            "no source given: use --source file:PATH, --source mic or --source rtp://HOST:PORT"
        )
    settings = settings_from_args(args, overrides(args, SESSION, RTP, *PIPELINE_FLAGS))
    setup_logging(settings.log_level)
    return run_sessions(settings, args.source)


def run_sessions(
    settings: Settings,
    specs: Sequence[str],
    extra_sinks: Sequence[Sink] = (),
    console_sessions: bool = False,
) -> int:
    sessions = open_sources(settings, specs)
    try:
        stats = asyncio.run(_run(settings, sessions, extra_sinks))
    except pipeline_errors() as e:
        raise CliError(str(e)) from e
    if stats is None:
        return 130
    print(
        f"emomon: {stats.events} events from {stats.utterances} utterances "
        f"({len(sessions)} session{'s' if len(sessions) != 1 else ''})",
        file=sys.stderr,
    )
    return 0


async def _run(
    settings: Settings, sessions: list[tuple[str, AudioSource]], extra_sinks: Sequence[Sink]
):  # type: ignore[no-untyped-def]
    from emomon.services.pipeline import Pipeline, build_sinks

    async with contextlib.AsyncExitStack() as stack:
        if settings.mqtt.embedded_broker and not settings.mqtt.url:
            from emomon.services.publish.broker import embedded_broker

            url = await stack.enter_async_context(
                embedded_broker("127.0.0.1", settings.mqtt.embedded_port)
            )
            print(f"emomon: embedded MQTT broker at {url}", file=sys.stderr)
            settings = settings.model_copy(
                update={"mqtt": settings.mqtt.model_copy(update={"url": url})}
            )
        from emomon.services.commands.dashboard import linger, open_dashboard

        hub, page = await open_dashboard(settings, stack, "embedded")  # None without --dashboard
        outputs = [hub] if hub is not None else []
        sinks = [*build_sinks(settings, [s for s, _ in sessions], outputs), *extra_sinks]
        pipeline = Pipeline(settings, sinks)
        stack.callback(pipeline.close)
        stop = asyncio.Event()
        install_stop_handlers(
            stop,
            drain_timeout_s=settings.drain_timeout_s,
            announce=lambda _name: print(
                "emomon: stopping, draining what was heard (Ctrl-C again to force)",
                file=sys.stderr,
            ),
        )
        try:
            stats = await pipeline.run(sessions, stop)
            if hub is not None:
                await linger(settings, hub, page, stop, stats.events)
            return stats
        except asyncio.CancelledError:
            print("emomon: forced stop; in-flight utterances were abandoned", file=sys.stderr)
            return None
