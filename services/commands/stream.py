"""``emomon stream``: the streamer half of the distributed mode.

Audio sources -> segmenter -> speaker attribution -> transcriber (the same chain as ``emomon
run``, from :mod:`emomon.services.pipeline`) -> ``XADD`` to a Redis stream. The producer keeps a
bounded local buffer so that audio capture never waits on Redis (see
:class:`~emomon.services.queue.redis_streams.RedisProducer` for the overflow policy).

Starting it imports neither torch nor the emotion model (``tests/unit/test_cli.py`` checks):
torch comes in only when speaker clustering loads its embedding model.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from emomon.services.commands.common import CliError, Command, settings_from_args, setup_logging
from emomon.services.commands.flags import (
    BUFFER,
    METRICS,
    REDIS,
    SESSION,
    SOURCE,
    add_common,
    add_flags,
    add_operations,
    overrides,
)
from emomon.services.commands.sessions import open_sources
from emomon.services.health import Health, RedisProbe
from emomon.services.metrics import Metrics, metrics_server
from emomon.services.queue.redis_streams import RedisProducer, RedisQueueError, connect
from emomon.services.settings import Settings
from emomon.services.signals import install_stop_handlers

log = logging.getLogger("emomon.stream")

FLAGS = (REDIS, SESSION, SOURCE, BUFFER)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="audio source, as for 'emomon run' (file, mic:, rtp://)",
    )
    add_common(p)
    add_flags(p, *FLAGS)
    p.add_argument(
        "--no-frames",
        action="store_true",
        help="do not ship the ASR pass's Whisper encoder frames (smaller entries; workers recompute them)",
    )
    add_operations(p)
    p.set_defaults(func=_main)


COMMAND = Command(
    "stream",
    "distributed mode: audio in, transcribed utterances out to a Redis stream",
    configure,
    description=(
        "Capture audio, cut and transcribe utterances, and XADD them to a Redis stream for "
        "'emomon worker' processes. While Redis is unreachable utterances wait in a bounded "
        "local buffer (oldest dropped and counted when full); capture never stops."
    ),
)


def _main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, overrides(args, *FLAGS, METRICS))
    setup_logging(settings.log_level, args.log_json)
    try:
        return asyncio.run(serve_stream(settings, args.sources, with_frames=not args.no_frames))
    except asyncio.CancelledError:  # a second SIGINT/SIGTERM: forced stop, work in hand abandoned
        return 130


async def serve_stream(
    settings: Settings,
    specs: Sequence[str],
    stop: asyncio.Event | None = None,
    with_frames: bool = True,
) -> int:
    """Run every source into the stream until they end or SIGTERM/SIGINT; drain the buffer; return 0.

    Shutdown order (STYLE.md 6): sources close first, what was already heard is transcribed and
    offered, then the producer gets ``drain_timeout_s`` to push its buffer to Redis.
    """
    from emomon.services import pipeline  # heavy (Whisper): imported only when streaming
    from emomon.streamer.transcriber import Transcriber, TranscriberError

    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    sessions = open_sources(settings, specs)
    try:
        transcriber = Transcriber(pipeline.transcriber_config(settings))
    except TranscriberError as e:
        raise CliError(f"cannot load the speech-to-text model: {e}") from e
    metrics = Metrics()
    try:
        client = connect(settings.redis.url, command_retries=0)
    except RedisQueueError as e:
        raise CliError(str(e)) from e
    producer = RedisProducer(client, settings.redis, metrics, with_frames=with_frames)
    probe = RedisProbe.for_url(settings.redis.url) if settings.metrics.port is not None else None
    state = {"ready": False}

    def loop_health() -> tuple[bool, dict[str, Any]]:
        alive, detail = producer.health()
        return alive, {**detail, "ready": state["ready"]}  # models warm, sources open

    health = Health(
        loop_health,
        probe,
        redis_down_is_unhealthy=False,  # the buffer rides the outage out (RedisProducer.health)
        auth_error=lambda: producer.auth_error,
    )
    server = metrics_server(settings, metrics, health)
    stats = pipeline.PipelineStats()

    async def pump(session: str, source: Any) -> None:
        try:
            async for utt in pipeline.utterances(source, settings, session, transcriber, stats):
                producer.offer(utt)  # never waits: the buffer absorbs a Redis outage
        finally:
            await source.close()

    producer.start()
    if server is not None:
        await server.start()
    # Issue #15: models warm before a network source binds, so that audio arriving is handled at
    # once instead of queueing behind the warm-up; the ready line is the one to wait for.
    if settings.warm_up:
        cluster = any(
            pipeline.clusters_speakers(settings.speakers.mode, src) for _, src in sessions
        )
        await asyncio.to_thread(pipeline.warm_up_streamer, transcriber, settings, cluster)
    try:
        await pipeline.start_sources(sessions)
    except BaseException:
        await producer.close(0)
        if server is not None:
            await server.close()
        await client.aclose()
        transcriber.close()
        raise
    state["ready"] = True
    names = ", ".join(f"{src.name} (session {sid})" for sid, src in sessions)
    line = f"emomon: ready: {names} -> Redis stream {settings.redis.stream!r}"
    log.info("%s", line)
    print(line, file=sys.stderr, flush=True)
    pumps = [
        asyncio.create_task(pump(sid, src), name=f"source:{spec}")
        for spec, (sid, src) in zip(specs, sessions, strict=True)
    ]
    stopper = asyncio.create_task(stop.wait())
    failed = 0
    try:
        while not stopper.done() and not all(t.done() for t in pumps):
            await asyncio.wait([*pumps, stopper], return_when=asyncio.FIRST_COMPLETED)
        for _, source in sessions:  # sources stop first, the pipeline drains behind them
            await source.close()
        _, late = await asyncio.wait(pumps, timeout=settings.drain_timeout_s)
        for t in late:
            t.cancel()
        for t in pumps:
            if t.done() and not t.cancelled() and t.exception() is not None:
                failed += 1
                log.error("source %s failed: %s", t.get_name(), t.exception())
        await producer.close(settings.drain_timeout_s)
    finally:
        stopper.cancel()
        if server is not None:
            await server.close()
        if probe is not None:
            await probe.aclose()
        await client.aclose()
        transcriber.close()
    log.info(
        "stream finished: %d utterances, %d written to %r, %d dropped",
        stats.utterances,
        producer.produced,
        settings.redis.stream,
        producer.dropped,
    )
    return 1 if failed else 0
