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
from collections.abc import Sequence

import numpy as np

from emomon.services.commands.common import CliError, Command, settings_from_args, setup_logging
from emomon.services.commands.flags import (
    METRICS,
    MODEL,
    REDIS,
    SINKS,
    WORKER,
    add_common,
    add_flags,
    add_operations,
    overrides,
)
from emomon.services.context import RedisContextStore
from emomon.services.health import Health, RedisProbe
from emomon.services.metrics import Metrics, metrics_server
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

FLAGS = (REDIS, WORKER, MODEL, SINKS)


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_flags(p, *FLAGS)
    add_operations(p)
    p.set_defaults(func=_main)


COMMAND = Command(
    "worker",
    "distributed mode: classify utterances from a Redis stream and publish events",
    configure,
    description=(
        "Consume utterances written by 'emomon stream' from a Redis Streams consumer group, "
        "classify them in batches and publish one event per utterance. Entries are acked only "
        "after the sinks took the events; a crashed worker's entries are reclaimed by the others."
    ),
)


def settings_for(args: argparse.Namespace) -> Settings:
    return settings_from_args(args, overrides(args, *FLAGS, METRICS))


def _main(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    setup_logging(settings.log_level, getattr(args, "log_json", False))
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
    probe = RedisProbe.for_url(settings.redis.url) if settings.metrics.port is not None else None
    health = Health(
        worker.health,
        probe,
        sinks,
        auth_error=lambda: worker.auth_error,
        sink_errors=lambda: worker.delivery.sink_errors,
    )
    server = metrics_server(settings, metrics, health)
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
        if probe is not None:
            await probe.aclose()
        await client.aclose()
        close = getattr(clf, "close", None)
        if callable(close):
            close()  # FusionWorker: joins its inference thread
    return 0
