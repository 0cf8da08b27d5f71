"""``emomon worker``: the fusion-worker half of the distributed mode.

Reads utterances from the Redis stream in a consumer group, classifies them in dynamic batches,
publishes the events through the configured sinks, keeps the per-session context in Redis, and
acks. Run as many as there are GPUs/CPU slots; they share the stream through the group.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emomon.services.cli import CliError, put, settings_from_args
from emomon.services.commands.stream import (
    add_metrics_flags,
    add_redis_flags,
    redis_overrides,
    setup_command_logging,
)
from emomon.services.context import RedisContextStore
from emomon.services.metrics import Metrics, MetricsServer
from emomon.services.publish.base import Sink, SinkError
from emomon.services.queue.redis import (
    Classifier,
    RedisQueueError,
    RedisStreamWorker,
    connect,
)
from emomon.services.settings import Settings
from emomon.services.signals import install_stop_handlers
from emomon.streamer.utterance import SAMPLE_RATE_HZ, Utterance

log = logging.getLogger("emomon.worker")


def register(
    sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "worker",
        help="distributed mode: classify utterances from a Redis stream and publish events",
        description=(
            "Consume utterances written by 'emomon stream' from a Redis Streams consumer group, "
            "classify them in batches and publish one event per utterance. Entries are acked only "
            "after the sinks took the events; a crashed worker's entries are reclaimed by the others."
        ),
    )
    add_common(p)
    add_redis_flags(p)
    g = p.add_argument_group("worker")
    g.add_argument(
        "--consumer",
        help="consumer name in the group; keep it stable across restarts (default host-pid)",
    )
    g.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the emotion model runs (default auto)",
    )
    g.add_argument(
        "--checkpoint", metavar="DIR", help="emotion model checkpoint (default: the shipped one)"
    )
    g.add_argument(
        "--max-batch", type=int, metavar="N", help="utterances per batch at most (default 32)"
    )
    g.add_argument(
        "--max-wait-ms", type=int, metavar="MS", help="wait this long to fill a batch (default 20)"
    )
    g.add_argument(
        "--claim-idle-ms",
        type=int,
        metavar="MS",
        help="reclaim entries idle this long from dead workers",
    )
    g.add_argument(
        "--max-deliveries",
        type=int,
        metavar="N",
        help="dead-letter an entry after N failed deliveries",
    )
    g.add_argument(
        "--context-ttl-s",
        type=int,
        metavar="S",
        help="forget a session's context after S idle seconds",
    )
    g.add_argument("--no-text", action="store_true", help="leave transcripts out of events")
    s = p.add_argument_group("sinks")
    s.add_argument("--jsonl", metavar="FILE", help="append events to FILE as JSON lines")
    s.add_argument(
        "--mqtt-url",
        "--mqtt",
        metavar="URL",
        help="publish events to an MQTT broker, mqtt[s]://host:port",
    )
    s.add_argument("--no-console", action="store_true", help="do not print events on stdout")
    add_metrics_flags(p)
    p.set_defaults(func=_main)


def settings_for(args: argparse.Namespace) -> Settings:
    ov: dict[str, Any] = redis_overrides(args)
    put(ov, "redis.consumer", args.consumer)
    put(ov, "redis.claim_idle_ms", args.claim_idle_ms)
    put(ov, "redis.max_deliveries", args.max_deliveries)
    put(ov, "redis.context_ttl_s", args.context_ttl_s)
    put(ov, "worker.device", args.device)
    put(ov, "worker.checkpoint", args.checkpoint)
    put(ov, "worker.max_batch", args.max_batch)
    put(ov, "worker.max_wait_ms", args.max_wait_ms)
    put(ov, "worker.include_text", False if args.no_text else None)
    put(ov, "jsonl.path", args.jsonl)
    put(ov, "mqtt.url", args.mqtt_url)
    put(ov, "console.enabled", False if args.no_console else None)
    return settings_from_args(args, ov)


def _main(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    setup_command_logging(settings.log_level, getattr(args, "log_json", False))
    try:
        return asyncio.run(serve_worker(settings))
    except asyncio.CancelledError:  # a second SIGINT/SIGTERM: forced stop, work in hand abandoned
        return 130


def _default_classifier(settings: Settings) -> Classifier:
    import torch  # heavy: imported only when serving

    from emomon.services.worker import FusionWorker, WorkerError

    if settings.worker.device == "cuda" and not torch.cuda.is_available():
        raise CliError(
            "--device cuda, but torch sees no CUDA device on this host; use --device auto or cpu"
        )
    try:
        return FusionWorker(settings.worker)
    except WorkerError as e:
        raise CliError(str(e)) from e


def _default_sinks(settings: Settings) -> list[Sink]:
    from emomon.services.pipeline import build_sinks

    return list(build_sinks(settings))


async def warm_up(classifier: Classifier) -> None:
    """Classify one silent utterance before joining the group.

    The first batch pays for lazy initialisation (kernels, tokenizer, imports): seconds on a cold
    CPU. Paying it before the first XREADGROUP keeps it out of the latency of real utterances and
    stops a cold worker from taking a share of the stream it cannot serve yet.
    """
    t0 = time.perf_counter()
    probe = Utterance(
        session="warm-up",
        speaker="-",
        channel="0",
        utterance_id="warm-up",
        start_s=0.0,
        end_s=1.0,
        end_wall=time.time(),
        pcm=np.zeros(SAMPLE_RATE_HZ, dtype=np.int16),
        text="warm up",
    )
    await classifier.classify([probe])
    log.info("model warmed up in %.2fs", time.perf_counter() - t0)


async def serve_worker(
    settings: Settings,
    classifier: Classifier | None = None,
    sinks: Sequence[Sink] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``); finish and ack the batch in hand; return 0.

    ``classifier`` and ``sinks`` default to the real fusion worker and the configured sinks;
    passing them is for embedding the worker elsewhere (benchmarks, tests).
    """
    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    # A few command-level retries ride out a failover blip; longer outages are the loop's policy.
    try:
        client = connect(settings.redis.url, command_retries=2)
    except RedisQueueError as e:
        raise CliError(str(e)) from e
    clf = (
        classifier
        if classifier is not None
        else await asyncio.to_thread(_default_classifier, settings)
    )
    await warm_up(clf)
    sinks = list(sinks) if sinks is not None else _default_sinks(settings)
    metrics = Metrics()
    store = RedisContextStore(client, settings.redis.context_ttl_s)
    from emomon.services.worker import FusionWorker

    if isinstance(clf, FusionWorker):
        clf.use_context(store)  # it reads each session's earlier turns from the store it fills
    worker = RedisStreamWorker(
        client,
        settings.redis,
        settings.worker,
        clf,
        sinks,
        metrics=metrics,
        context=store,
    )
    server = (
        MetricsServer(metrics, worker.health, port=settings.metrics.port)
        if settings.metrics.port is not None
        else None
    )
    started: list[Sink] = []
    try:
        for sink in sinks:
            try:
                await sink.start()
            except SinkError as e:
                raise CliError(f"sink {sink.name!r} cannot start: {e}") from e
            started.append(sink)
        if server is not None:
            await server.start()
        try:
            await worker.run(stop)
        except RedisQueueError as e:
            raise CliError(str(e), code=1) from e
    finally:
        for sink in reversed(started):
            try:
                await sink.close()
            except SinkError as e:
                log.error("sink %r did not close cleanly: %s", sink.name, e)
        if server is not None:
            await server.close()
        await client.aclose()
        close = getattr(clf, "close", None)
        if callable(close):
            close()  # FusionWorker: joins its inference thread
    return 0
