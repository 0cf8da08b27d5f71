"""The embedded pipeline: both halves in one process, and the factories that build them.

    source.chunks() -> streamer half (emomon.streamer.stages.utterances) -> Utterance
        -> queue -> FusionWorker (batches) -> EmotionEvent -> sinks

The streamer half lives in :mod:`emomon.streamer.stages`; here its stages get their configs
from the settings (``utterances()`` below, also used by ``emomon stream``), sources and sinks
are built from their specs, and :class:`Pipeline` runs both halves with the in-process queue
(``emomon run`` / ``emomon replay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from emomon.services.context import InMemoryContextStore
from emomon.services.delivery import Delivery
from emomon.services.events import EmotionEvent
from emomon.services.metrics import Metrics
from emomon.services.publish.base import Sink
from emomon.services.queue.memory import InProcessQueue
from emomon.services.settings import Settings
from emomon.services.worker import FusionWorker
from emomon.streamer import stages
from emomon.streamer.config import (
    SegmenterConfig,
    SpeakerConfig,
    StreamerConfig,
    TranscriberConfig,
    set_torch_threads,
)
from emomon.streamer.sources.base import AudioSource, SourceError
from emomon.streamer.stages import (
    StreamStats,
    clusters_speakers,
    shared_embedder,
    shared_segmentation,
)
from emomon.streamer.transcriber import Transcriber, TranscriberError
from emomon.streamer.utterance import SAMPLE_RATE_HZ, Utterance

log = logging.getLogger(__name__)


def warm_up_streamer(
    transcriber: Transcriber, settings: Settings, cluster: bool
) -> tuple[np.ndarray, Any]:
    """Run the streamer's models once on a dummy input before audio flows.

    First calls allocate and initialise (measured: the first event of a fresh `emomon run` took
    2.3 s, the next ones 0.3-0.8 s); that cost belongs to start-up, not to the first utterance
    (issue #15: warm up before the source binds). Returns the dummy audio and its Whisper frames
    so that the embedded pipeline can warm the emotion model on them too.
    """
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(SAMPLE_RATE_HZ) * 0.01).astype(np.float32)
    tr = transcriber.transcribe_sync(noise)
    if settings.vad.end_of_turn_pause_ms > 0:  # a missing model is a start-up error, not a late one
        from emomon.streamer.end_of_turn import shared_end_of_turn

        shared_end_of_turn().complete_probability(noise)
    if cluster:
        set_torch_threads(settings.worker.torch_threads)
        shared_embedder(settings.speakers.runtime)  # loads CAM++ and warms it
        if settings.speakers.segmentation:
            shared_segmentation(settings.speakers.runtime)  # likewise
    return noise, tr.frames


@dataclass
class PipelineStats(StreamStats):
    """Counters and per-utterance stage timings of one run (read by the CLI and benchmarks)."""

    events: int = 0
    sink_ms: list[float] = field(default_factory=list)
    by_session: dict[str, dict[str, int]] = field(default_factory=dict)  # utterances, events
    events_list: list[EmotionEvent] = field(default_factory=list)


# -- factories ---------------------------------------------------------------------------------
async def start_sources(sessions: Sequence[tuple[str, AudioSource]]) -> None:
    """Bind every source that has a ``start`` (RTP sockets); if one fails, close them all."""
    try:
        for _, src in sessions:
            start = getattr(src, "start", None)
            if start is not None:
                await start()
    except BaseException:
        for _, src in sessions:
            await src.close()
        raise


def build_source(spec: str, settings: Settings) -> AudioSource:
    """``file:PATH`` (or a bare path), ``mic[:DEVICE]``, ``rtp://HOST:PORT``."""
    s = settings.source
    if spec.startswith("rtp://"):
        from emomon.streamer.sources.rtp import RtpSource

        host, port = rtp_address(spec)
        return RtpSource(
            host,
            port,
            jitter_ms=s.rtp_jitter_ms,
            idle_timeout_s=s.rtp_idle_timeout_s,
            max_streams=s.rtp_max_streams,
            max_streams_per_source=s.rtp_max_streams_per_source,
            allow=s.rtp_allow,
            payload_types=s.rtp_payload_types,
            ssrc_names=s.rtp_ssrc_names,
            sdp_path=s.rtp_sdp,
            exit_when_idle_s=s.rtp_exit_when_idle_s,
        )
    if s.rtp_sdp:
        raise SourceError(f"--sdp (source.rtp_sdp) applies to rtp:// sources only, not {spec!r}")
    if spec == "mic" or spec.startswith("mic:"):
        from emomon.streamer.sources.mic import MicSource

        dev: str | int | None = spec[4:] or None
        if isinstance(dev, str) and dev.isdigit():
            dev = int(dev)
        return MicSource(device=dev, channels=s.mic_channels, samplerate=s.mic_samplerate)
    from emomon.streamer.sources.file import FileSource

    path = spec[5:] if spec.startswith("file:") else spec
    return FileSource(path, realtime=s.realtime, max_channels=s.file_max_channels)


def rtp_address(spec: str) -> tuple[str, int]:
    """``(host, port)`` of ``rtp://HOST:PORT``; :class:`SourceError` (one line) for anything else."""
    hint = "use rtp://HOST:PORT, e.g. rtp://0.0.0.0:5004 or rtp://[::]:5004"
    try:
        u = urlparse(spec)
        port = u.port  # raises ValueError for a port out of 0..65535 or not a number
    except ValueError as e:
        raise SourceError(f"bad RTP source {spec!r}: {e} ({hint})") from e
    if not u.hostname or port is None:
        raise SourceError(f"bad RTP source {spec!r}: host or port missing ({hint})")
    if u.path not in ("", "/") or u.query or u.fragment or u.username:
        raise SourceError(f"bad RTP source {spec!r}: unexpected path, query or user ({hint})")
    return u.hostname, port


def default_session_id(spec: str) -> str:
    if spec.startswith("rtp://"):
        base = "rtp-" + urlparse(spec).netloc
    elif spec == "mic" or spec.startswith("mic:"):
        base = "mic"
    else:
        base = Path(spec[5:] if spec.startswith("file:") else spec).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "session"


def streamer_config(settings: Settings) -> StreamerConfig:
    """The streamer stages' configs, each made from its settings section whole."""
    return StreamerConfig(
        vad=SegmenterConfig(**settings.vad.model_dump()),
        speakers=SpeakerConfig(**settings.speakers.model_dump()),
        torch_threads=settings.worker.torch_threads,
    )


def utterances(
    source: AudioSource,
    settings: Settings,
    session: str,
    transcriber: Transcriber,
    stats: StreamStats,
) -> AsyncIterator[Utterance]:
    """The streamer half (:func:`emomon.streamer.stages.utterances`) configured by ``settings``."""
    return stages.utterances(source, streamer_config(settings), session, transcriber, stats)


def encoder_window(settings: Settings) -> str:
    """The ASR encoder window: as set, or (``auto``) the frame recipe the emotion checkpoint
    reads (window and level), so the frames the ASR pass hands over are the ones it expects."""
    if settings.asr.encoder_window != "auto":
        return settings.asr.encoder_window
    from emomon.model.errors import ModelError
    from emomon.model.recipe import frames_recipe

    try:
        return frames_recipe(settings.worker.checkpoint)
    except ModelError as e:
        raise TranscriberError(
            f"asr.encoder_window=auto reads the emotion checkpoint's window: {e}; "
            "or set asr.encoder_window (e.g. 10+8)"
        ) from e


def transcriber_config(settings: Settings) -> TranscriberConfig:
    """The ASR section whole, with ``encoder_window=auto`` resolved."""
    asr = settings.asr.model_dump()
    return TranscriberConfig(**{**asr, "encoder_window": encoder_window(settings)})


def build_sinks(
    settings: Settings, sessions: Sequence[str] = (), insight_outputs: Sequence[object] = ()
) -> list[Sink]:
    """The sinks the settings ask for; ``insight_outputs`` (the dashboard) also get every event
    with its trend and alerts (issue 17)."""
    from emomon.services.insights import insight_sinks
    from emomon.services.publish.console import ConsoleSink
    from emomon.services.publish.jsonl import JsonlSink

    sinks: list[Sink] = []
    if settings.console.enabled:
        sinks.append(ConsoleSink(color=settings.console.color, show_session=len(sessions) > 1))
    if settings.jsonl.path:
        sinks.append(JsonlSink(settings.jsonl.path, append=settings.jsonl.append))
    if settings.mqtt.url:
        from emomon.services.publish.mqtt import MqttSink

        sinks.append(MqttSink(settings.mqtt, sessions=sessions))
    sinks.extend(insight_sinks(settings, insight_outputs))  # type: ignore[arg-type]
    return sinks


# -- the embedded pipeline -----------------------------------------------------------------
class Pipeline:
    """Both halves in one process: sources -> ... -> in-process queue -> worker -> sinks."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        transcriber: Transcriber | None = None,
        worker: FusionWorker | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.sinks = list(sinks)
        self.transcriber = transcriber or Transcriber(transcriber_config(settings))
        self.worker = worker or FusionWorker(settings.worker)
        # each session's earlier turns, for the model's conversation context (bounded, LRU + TTL);
        # None when the model does not read context, so nothing is kept for it
        self.context = self.worker.use_context(
            InMemoryContextStore(ttl_s=settings.redis.context_ttl_s)
        )
        self.delivery = Delivery(self.worker, self.sinks, self.context, metrics)
        self.stats = PipelineStats()
        self.queue = InProcessQueue(settings.worker.queue_size)
        self.ready = False  # models warm, sinks started, sources listening

    async def _front(self, session: str, source: AudioSource) -> None:
        try:
            async for utt in utterances(
                source, self.settings, session, self.transcriber, self.stats
            ):
                per = self.stats.by_session.setdefault(session, {"utterances": 0, "events": 0})
                per["utterances"] += 1
                await self.queue.put(utt)
        finally:
            await source.close()

    async def _back(self) -> None:
        w = self.settings.worker
        while (batch := await self.queue.get_batch(w.max_batch, w.max_wait_ms)) is not None:
            result = await self.delivery.deliver(batch)
            if result.classify_error is not None:
                raise result.classify_error  # the embedded run stops on a model failure
            events = result.events
            sink_ms = result.publish_s * 1000 / max(1, len(events))
            self.stats.sink_ms.extend([sink_ms] * len(events))
            self.stats.events += len(events)
            for ev in events:
                per = self.stats.by_session.setdefault(ev.session, {"utterances": 0, "events": 0})
                per["events"] += 1
            self.stats.events_list.extend(events)

    def warm_up(self, cluster: bool) -> None:
        """Warm the streamer's models (:func:`warm_up_streamer`) and the emotion model."""
        from emomon.model import EmotionInput

        noise, frames = warm_up_streamer(self.transcriber, self.settings, cluster)
        self.worker.model.predict([EmotionInput("hello", audio=noise, whisper_frames=frames)])

    async def run(
        self,
        sessions: Sequence[tuple[str, AudioSource]],
        stop: asyncio.Event | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> PipelineStats:
        """Run until every source ends or ``stop`` is set; then drain within ``drain_timeout_s``.

        Models warm up first, then sinks start, then network sources bind (``start``): audio
        that arrives is processed at once, never queued behind the warm-up; ``ready`` turns
        true and ``on_ready`` is called only then (issue #15). Sources stop first (no new
        audio), what was already heard is segmented, transcribed and classified, sinks are
        closed last. Errors of one source end that session only.
        """
        stop = stop or asyncio.Event()
        if self.settings.warm_up:
            cluster = any(
                clusters_speakers(self.settings.speakers.mode, src) for _, src in sessions
            )
            await asyncio.to_thread(self.warm_up, cluster)
        started: list[Sink] = []
        try:
            for sink in self.sinks:
                await sink.start()
                started.append(sink)
        except BaseException:
            for sink in reversed(started):
                with contextlib.suppress(Exception):
                    await sink.close()
            raise
        try:
            await start_sources(sessions)
        except BaseException:
            for sink in reversed(started):
                with contextlib.suppress(Exception):
                    await sink.close()
            raise
        self.ready = True
        if on_ready is not None:
            on_ready()
        errors: list[BaseException] = []
        back = asyncio.create_task(self._back(), name="fusion-worker")
        fronts = [
            asyncio.create_task(self._front(s, src), name=f"session-{s}") for s, src in sessions
        ]

        async def watch_stop() -> None:
            await stop.wait()
            for _, src in sessions:
                await src.close()

        watcher = asyncio.create_task(watch_stop())
        try:
            for res in await asyncio.gather(*fronts, return_exceptions=True):
                if isinstance(res, BaseException):
                    errors.append(res)
            await self.queue.close()
            await back
        except asyncio.CancelledError:
            # Forced stop (second Ctrl-C or drain timeout): whatever is in flight is abandoned.
            for t in (*fronts, back):
                t.cancel()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for sink in self.sinks:
                try:
                    await sink.close()
                except Exception as e:  # noqa: BLE001 - close every sink even if one fails
                    log.error("closing sink %s failed: %s", getattr(sink, "name", sink), e)
        if errors:
            raise errors[0]
        return self.stats

    def close(self) -> None:
        self.transcriber.close()
        self.worker.close()
