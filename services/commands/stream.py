"""``emomon stream``: the streamer half of the distributed mode.

Audio sources -> segmenter -> speaker attribution -> transcriber (the same chain as ``emomon
run``, from :mod:`emomon.services.pipeline`) -> ``XADD`` to a Redis stream. The producer keeps a
bounded local buffer so that audio capture never waits on Redis (see
:class:`~emomon.services.queue.redis_streams.RedisProducer` for the overflow policy).

Also home to what both distributed commands share: the Redis/metrics flags and structured logging
(stop signals: ``emomon.services.signals``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from emomon.services.cli import CliError, put, settings_from_args, setup_logging
from emomon.services.metrics import Metrics, MetricsServer
from emomon.services.queue.redis_streams import RedisProducer, RedisQueueError, connect
from emomon.services.settings import Settings
from emomon.services.signals import install_stop_handlers

log = logging.getLogger("emomon.stream")


# -- shared by `stream` and `worker` ---------------------------------------------------------


def add_redis_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("redis")
    g.add_argument(
        "--redis-url",
        metavar="URL",
        help="redis://[user:pass@]host:port/db (default redis://127.0.0.1:6379/0)",
    )
    g.add_argument(
        "--stream", metavar="KEY", help="utterance stream key (default emomon:utterances)"
    )
    g.add_argument("--group", metavar="NAME", help="consumer group (default emomon-workers)")
    g.add_argument(
        "--dead-letter-stream", metavar="KEY", help="dead-letter stream key (default emomon:dead)"
    )
    g.add_argument(
        "--maxlen", type=int, metavar="N", help="approximate stream length bound, MAXLEN ~ N"
    )


def add_metrics_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("operations")
    g.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve /metrics and /healthz on PORT"
    )
    g.add_argument(
        "--log-json", action="store_true", help="one JSON object per log line (for log shippers)"
    )


def redis_overrides(args: argparse.Namespace) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    put(ov, "redis.url", args.redis_url)
    put(ov, "redis.stream", args.stream)
    put(ov, "redis.group", args.group)
    put(ov, "redis.dead_letter_stream", args.dead_letter_stream)
    put(ov, "redis.maxlen", args.maxlen)
    put(ov, "metrics.port", args.metrics_port)
    return ov


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (+ exception), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, ensure_ascii=False)


def setup_command_logging(level: str, as_json: bool) -> None:
    setup_logging(level)
    if as_json:
        import time

        formatter = JsonLogFormatter()
        formatter.converter = time.gmtime
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)


# -- the stream command ----------------------------------------------------------------------


def register(
    sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "stream",
        help="distributed mode: audio in, transcribed utterances out to a Redis stream",
        description=(
            "Capture audio, cut and transcribe utterances, and XADD them to a Redis stream for "
            "'emomon worker' processes. While Redis is unreachable utterances wait in a bounded "
            "local buffer (oldest dropped and counted when full); capture never stops."
        ),
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="audio source, as for 'emomon run' (file, mic:, rtp://)",
    )
    add_common(p)
    add_redis_flags(p)
    g = p.add_argument_group("streamer")
    g.add_argument("--session", help="session id (default derived from the source)")
    g.add_argument(
        "--buffer-size",
        type=int,
        metavar="N",
        help="utterances held locally while Redis is away (default 1000)",
    )
    g.add_argument("--realtime", action="store_true", help="pace file input like a live source")
    g.add_argument(
        "--no-frames",
        action="store_true",
        help="do not ship the ASR pass's Whisper encoder frames (smaller entries; workers recompute them)",
    )
    add_metrics_flags(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    ov = redis_overrides(args)
    put(ov, "redis.buffer_size", args.buffer_size)
    put(ov, "source.session", args.session)
    put(ov, "source.realtime", True if args.realtime else None)
    settings = settings_from_args(args, ov)
    setup_command_logging(settings.log_level, args.log_json)
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
    from emomon.streamer.sources.base import SourceError
    from emomon.streamer.transcriber import Transcriber, TranscriberError

    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    try:
        sources = [(spec, pipeline.build_source(spec, settings)) for spec in specs]
        for _, src in sources:
            bind = getattr(src, "bind", None)
            if bind is not None:
                bind()  # open network ports before the models load
    except SourceError as e:
        raise CliError(f"cannot open source: {e}") from e
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
    server = (
        MetricsServer(metrics, producer.health, port=settings.metrics.port)
        if settings.metrics.port is not None
        else None
    )
    stats = pipeline.PipelineStats()
    multi = len(sources) > 1

    async def pump(spec: str, source: Any) -> None:
        session = settings.source.session or pipeline.default_session_id(spec)
        if multi and settings.source.session:
            session = f"{settings.source.session}-{pipeline.default_session_id(spec)}"
        try:
            async for utt in pipeline.utterances(source, settings, session, transcriber, stats):
                producer.offer(utt)  # never waits: the buffer absorbs a Redis outage
        finally:
            await source.close()

    producer.start()
    if server is not None:
        await server.start()
    pumps = [asyncio.create_task(pump(spec, src), name=f"source:{spec}") for spec, src in sources]
    stopper = asyncio.create_task(stop.wait())
    failed = 0
    try:
        while not stopper.done() and not all(t.done() for t in pumps):
            await asyncio.wait([*pumps, stopper], return_when=asyncio.FIRST_COMPLETED)
        for _, source in sources:  # sources stop first, the pipeline drains behind them
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
