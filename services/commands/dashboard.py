"""``emomon dashboard``: the live page on its own, fed by MQTT (distributed mode) or JSONL files;
and :func:`open_dashboard`, which ``run --dashboard`` and ``replay --dashboard`` use."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from emomon.services.commands.common import (
    CliError,
    Command,
    pipeline_errors,
    settings_from_args,
    setup_logging,
)
from emomon.services.commands.flags import (
    DASHBOARD,
    Flag,
    FlagGroup,
    add_common,
    add_flags,
    overrides,
)
from emomon.services.settings import Settings

FEED = FlagGroup(
    "events to show",
    (
        Flag(
            ("--mqtt-url", "--mqtt"),
            "mqtt.url",
            "subscribe to the topics emomon run/worker publish: mqtt[s]://user:pass@host:port",
            metavar="URL",
        ),
        Flag(("--mqtt-prefix",), "mqtt.topic_prefix", "MQTT topic prefix", metavar="PREFIX"),
    ),
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "jsonl",
        nargs="*",
        metavar="FILE.jsonl",
        help="events written by --jsonl or emomon replay (trends and alerts are recomputed)",
    )
    add_flags(p, FEED)
    group = p.add_argument_group("dashboard")
    for flag in DASHBOARD.flags[1:]:  # --dashboard itself is implied
        flag.add_to(group)
    add_common(p)
    p.set_defaults(func=cmd_dashboard)


COMMAND = Command(
    "dashboard",
    "serve the live dashboard: from MQTT (beside emomon worker) or JSONL files",
    configure,
)


def _rules(settings: Settings) -> tuple[tuple[str, str], ...]:
    return tuple((r.name, r.text) for r in settings.alerts.parsed())


async def open_dashboard(settings: Settings, stack: contextlib.AsyncExitStack, source: str):  # type: ignore[no-untyped-def]
    """Start the page server for the rest of ``stack``; return its hub and URL (or None, None
    without ``dashboard.enabled``)."""
    if not settings.dashboard.enabled:
        return None, None
    from emomon.services.dashboard.hub import DashboardHub
    from emomon.services.dashboard.server import serve

    d = settings.dashboard
    hub = DashboardHub(d.history, source=source, rules=_rules(settings))
    url = await stack.enter_async_context(serve(hub, d.host, d.port))
    print(f"emomon: dashboard at {url}", file=sys.stderr, flush=True)
    return hub, url


async def linger(settings: Settings, hub, url: str, stop: asyncio.Event, events: int) -> None:  # type: ignore[no-untyped-def]
    """After the sources ended: mark the page ended and, with ``dashboard.keep_open``, serve it
    until Ctrl-C."""
    hub.set_status(live=False, detail=f"the run ended: {events} events")
    if settings.dashboard.keep_open and not stop.is_set():
        print(
            f"emomon: the run ended ({events} events); the dashboard stays at {url} (Ctrl-C to quit)",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()


def cmd_dashboard(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, overrides(args, FEED, DASHBOARD))
    settings = settings.model_copy(
        update={"dashboard": settings.dashboard.model_copy(update={"enabled": True})}
    )
    setup_logging(settings.log_level)
    if not args.jsonl and not settings.mqtt.url:
        raise CliError("nothing to show: give --mqtt-url URL (distributed mode) or FILE.jsonl")
    missing = [f for f in args.jsonl if not Path(f).is_file()]
    if missing:
        raise CliError(f"cannot read events from {missing[0]}: no such file")
    try:
        return asyncio.run(_serve(settings, args.jsonl))
    except pipeline_errors() as e:
        raise CliError(str(e)) from e


async def _serve(settings: Settings, files: list[str]) -> int:
    from emomon.services.dashboard.feeds import MqttFeed, load_jsonl
    from emomon.services.insights import Insights
    from emomon.services.redact import redact_url
    from emomon.services.signals import install_stop_handlers

    source = redact_url(settings.mqtt.url) if settings.mqtt.url else ", ".join(files)
    stop = asyncio.Event()
    install_stop_handlers(stop)
    async with contextlib.AsyncExitStack() as stack:
        hub, _ = await open_dashboard(settings, stack, source)
        if files:
            n = load_jsonl(hub, files, Insights(settings.trends, settings.alerts))
            print(f"emomon: {n} events loaded from {len(files)} file(s)", file=sys.stderr)
        feed = None
        if settings.mqtt.url:
            hub.set_status(live=True, connected=False, detail="connecting")
            feed = asyncio.create_task(MqttFeed(settings.mqtt, hub).run(), name="dashboard-mqtt")
        await stop.wait()
        if feed is not None:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
    return 0
