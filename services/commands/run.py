"""``emomon run``: everything in one process — sources in, per-speaker emotion events out."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from emomon.services.commands.common import (
    CliError,
    Command,
    pipeline_errors,
    settings_from_args,
    setup_logging,
)
from emomon.services.commands.flags import (
    DASHBOARD,
    METRICS,
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
from emomon.services.metrics import Metrics, metrics_server
from emomon.services.publish.base import Sink
from emomon.services.settings import Settings
from emomon.services.signals import install_stop_handlers
from emomon.streamer.sources.base import AudioSource

if TYPE_CHECKING:
    from emomon.services.pipeline import Pipeline, PipelineStats

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
    add_flags(p, SESSION, RTP, *PIPELINE_FLAGS, METRICS)
    add_common(p)
    p.set_defaults(func=cmd_run)


COMMAND = Command("run", "run the whole pipeline in one process (embedded mode)", configure)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.source:
        raise CliError(
            "no source given: use --source file:PATH, --source mic or --source rtp://HOST:PORT"
        )
    settings = settings_from_args(args, overrides(args, SESSION, RTP, *PIPELINE_FLAGS, METRICS))
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
    except OSError as e:  # the metrics port taken, say: one line, not a traceback
        raise CliError(f"cannot start: {e.strerror or e}") from e
    if stats is None:
        return 130
    for line in summary_lines(stats, sessions):
        print(line, file=sys.stderr)
    print(
        f"emomon: {stats.events} events from {stats.utterances} utterances "
        f"({len(sessions)} session{'s' if len(sessions) != 1 else ''})",
        file=sys.stderr,
    )
    return 0


#: RTP counters in the end-of-run summary, in this order (issue #15)
SUMMARY_RTP = (
    "packets",
    "lost",
    "late",
    "duplicate",
    "reordered",
    "unsupported_payload",
    "comfort_noise",
    "foreign_source",
    "foreign_bye",
    "streams_started",
    "streams_resumed",
)


def summary_lines(stats: PipelineStats, sessions: Sequence[tuple[str, AudioSource]]) -> list[str]:
    """One line per session: its events and utterances, and what its RTP receiver counted."""
    lines = []
    for sid, src in sessions:
        per = stats.by_session.get(sid, {})
        line = f"emomon: session {sid}: {per.get('events', 0)} events from {per.get('utterances', 0)} utterances"
        rtp = rtp_stats(src)
        if rtp is not None:
            line += "; RTP " + ", ".join(f"{k} {rtp.get(k, 0)}" for k in SUMMARY_RTP)
        lines.append(line)
    return lines


def rtp_stats(src: AudioSource) -> dict[str, int] | None:
    """An RTP receiver's counters (``RtpSource.stats``), None for other sources."""
    if not hasattr(src, "stats_by_ssrc"):
        return None
    stats = getattr(src, "stats", None)
    return stats if isinstance(stats, dict) else None


def ready_line(sessions: Sequence[tuple[str, AudioSource]], sinks: Sequence[Sink]) -> str:
    """The line to wait for before sending audio: models are warm and every source is open."""
    names = ", ".join(f"{src.name} (session {sid})" for sid, src in sessions)
    line = f"emomon: ready: {names}"
    for sink in sinks:
        describe = getattr(sink, "describe", None)
        if describe is not None:
            line += f"; {describe()}"
    return line


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
        metrics = Metrics()
        metrics.registry.register(RtpCollector(sessions))
        pipeline = Pipeline(settings, sinks, metrics=metrics)
        stack.callback(pipeline.close)
        server = metrics_server(
            settings, metrics, functools.partial(run_health, pipeline, sessions)
        )
        if server is not None:
            port = await server.start()
            stack.push_async_callback(server.close)
            print(
                f"emomon: metrics and health on http://{settings.metrics.host}:{port}/metrics "
                "and /healthz",
                file=sys.stderr,
            )

        def on_ready() -> None:
            line = ready_line(sessions, sinks)
            log.info("%s", line)
            print(line, file=sys.stderr, flush=True)

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
            stats = await pipeline.run(sessions, stop, on_ready=on_ready)
            if hub is not None:
                await linger(settings, hub, page, stop, stats.events)
            return stats
        except asyncio.CancelledError:
            print("emomon: forced stop; in-flight utterances were abandoned", file=sys.stderr)
            return None


def run_health(
    pipeline: Pipeline, sessions: Sequence[tuple[str, AudioSource]]
) -> tuple[bool, dict[str, Any]]:
    """``/healthz`` of ``emomon run``: unhealthy until ready (models warm, sources open)."""
    detail: dict[str, Any] = {"ready": pipeline.ready, "events": pipeline.stats.events}
    rtp = {sid: st for sid, src in sessions if (st := rtp_stats(src)) is not None}
    if rtp:
        detail["rtp"] = rtp
    return pipeline.ready, detail


class RtpCollector:
    """Prometheus view of the RTP receivers' counters, read at scrape time:
    ``emomon_rtp_total{session, counter}`` (``streams_active`` included, a level, not a total)."""

    def __init__(self, sessions: Sequence[tuple[str, AudioSource]]) -> None:
        self.sessions = sessions

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "emomon_rtp_total",
            "RTP receiver counters per session (packets, lost, late, foreign_source, ...)",
            labels=["session", "counter"],
        )
        for sid, src in self.sessions:
            for key, value in (rtp_stats(src) or {}).items():
                family.add_metric([sid, key], float(value))
        yield family
