"""``emomon run``: everything in one process — sources in, per-speaker emotion events out."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from emomon.services.cli import CliError, put, settings_from_args, setup_logging
from emomon.services.publish.base import Sink, SinkError
from emomon.services.settings import Settings
from emomon.services.signals import install_stop_handlers
from emomon.services.worker import WorkerError
from emomon.streamer.shared_models import SpeakerModelError
from emomon.streamer.sources.base import AudioSource, SourceError
from emomon.streamer.transcriber import TranscriberError

log = logging.getLogger("emomon.run")


def add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``run`` and ``replay`` (each maps onto one settings field)."""
    p.add_argument(
        "--realtime", action="store_true", default=None, help="pace file input like a live source"
    )
    p.add_argument("--jsonl", metavar="PATH", help="also append events to this JSON Lines file")
    p.add_argument(
        "--no-text", action="store_true", default=None, help="leave transcripts out of events"
    )
    p.add_argument("--no-console", action="store_true", default=None, help="no console lines")
    p.add_argument(
        "--asr-model",
        metavar="NAME_OR_PATH",
        help="faster-whisper model (default: shipped tiny.en)",
    )
    p.add_argument(
        "--checkpoint", metavar="DIR", help="emotion checkpoint (default: the shipped one)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="emotion model device")
    p.add_argument(
        "--mqtt-url", metavar="URL", help="publish events to MQTT: mqtt[s]://user:pass@host:port"
    )
    p.add_argument("--mqtt-prefix", metavar="PREFIX", help="MQTT topic prefix (default emomon)")
    p.add_argument(
        "--embedded-broker",
        action="store_true",
        default=None,
        help="start an in-process MQTT broker",
    )
    p.add_argument(
        "--ha-discovery", action="store_true", default=None, help="Home Assistant MQTT discovery"
    )
    p.add_argument(
        "--speakers", choices=["auto", "channel", "cluster"], help="speaker attribution mode"
    )
    p.add_argument(
        "--num-speakers", type=int, metavar="N", help="known number of people on a shared channel"
    )


def pipeline_overrides(args: argparse.Namespace) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    put(ov, "source.realtime", args.realtime)
    put(ov, "jsonl.path", args.jsonl)
    put(ov, "worker.include_text", False if args.no_text else None)
    put(ov, "console.enabled", False if args.no_console else None)
    put(ov, "asr.model", args.asr_model)
    put(ov, "worker.checkpoint", args.checkpoint)
    put(ov, "worker.device", args.device)
    put(ov, "mqtt.url", args.mqtt_url)
    put(ov, "mqtt.topic_prefix", args.mqtt_prefix)
    put(ov, "mqtt.embedded_broker", args.embedded_broker)
    put(ov, "mqtt.ha_discovery", args.ha_discovery)
    put(ov, "speakers.mode", args.speakers)
    put(ov, "speakers.num_speakers", args.num_speakers)
    return ov


def register(
    sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser("run", help="run the whole pipeline in one process (embedded mode)")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SPEC",
        help="file:PATH | mic[:DEVICE] | rtp://HOST:PORT (repeatable: one session each)",
    )
    p.add_argument("--session", help="session id (default: derived from the source)")
    p.add_argument("--sdp", metavar="FILE", help="SDP file for RTP dynamic payload types")
    add_pipeline_flags(p)
    add_common(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.source:
        raise CliError(
            "no source given: use --source file:PATH, --source mic or --source rtp://HOST:PORT"
        )
    ov = pipeline_overrides(args)
    put(ov, "source.session", args.session)
    put(ov, "source.rtp_sdp", args.sdp)
    settings = settings_from_args(args, ov)
    setup_logging(settings.log_level)
    return run_sessions(settings, args.source)


def open_sources(settings: Settings, specs: Sequence[str]) -> list[tuple[str, AudioSource]]:
    """Open every source before any model loads, so a bad path fails in a second, not ten."""
    from emomon.services.pipeline import build_source, default_session_id

    sessions: list[tuple[str, AudioSource]] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        try:
            src = build_source(spec, settings)
            bind = getattr(src, "bind", None)
            if bind is not None:
                bind()  # open network ports now: packets wait in the kernel while models load
        except SourceError as e:
            raise CliError(str(e)) from e
        sid = (
            settings.source.session
            if settings.source.session and len(specs) == 1
            else default_session_id(spec)
        )
        if sid in seen:
            sid = f"{sid}-{i + 1}"
        seen.add(sid)
        sessions.append((sid, src))
    return sessions


def run_sessions(
    settings: Settings,
    specs: Sequence[str],
    extra_sinks: Sequence[Sink] = (),
    console_sessions: bool = False,
) -> int:
    sessions = open_sources(settings, specs)
    try:
        stats = asyncio.run(_run(settings, sessions, extra_sinks))
    except (SourceError, SinkError, WorkerError, TranscriberError, SpeakerModelError) as e:
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
        sinks = [*build_sinks(settings, [s for s, _ in sessions]), *extra_sinks]
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
            return await pipeline.run(sessions, stop)
        except asyncio.CancelledError:
            print("emomon: forced stop; in-flight utterances were abandoned", file=sys.stderr)
            return None
