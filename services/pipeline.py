"""The data path, chained in one visible place.

    source.chunks() -> speech(): VAD segmenter + speaker attribution -> transcriber -> Utterance
        -> queue -> FusionWorker (batches) -> EmotionEvent -> sinks

``utterances()`` is the streamer half (also used by ``emomon stream``); :class:`Pipeline` runs
both halves in one process with the in-process queue (``emomon run`` / ``emomon replay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from emomon.services.context import InMemoryContextStore
from emomon.services.delivery import Delivery
from emomon.services.events import EmotionEvent
from emomon.services.publish.base import Sink
from emomon.services.queue.memory import InProcessQueue
from emomon.services.settings import Settings
from emomon.services.worker import FusionWorker, set_torch_threads
from emomon.streamer.segmenter import Segmenter, SegmenterConfig, SpeechSegment
from emomon.streamer.sources.base import AudioChunk, AudioSource, SourceError
from emomon.streamer.transcriber import (
    Transcriber,
    TranscriberConfig,
    TranscriberError,
    Transcript,
)
from emomon.streamer.utterance import SAMPLE_RATE_HZ, Utterance

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """Counters and per-utterance stage timings of one run (read by the CLI and benchmarks)."""

    chunks: int = 0
    segments: int = 0
    utterances: int = 0
    empty_transcripts: int = 0
    events: int = 0
    sink_ms: list[float] = field(default_factory=list)
    events_list: list[EmotionEvent] = field(default_factory=list)


# -- factories ---------------------------------------------------------------------------------
def build_source(spec: str, settings: Settings) -> AudioSource:
    """``file:PATH`` (or a bare path), ``mic[:DEVICE]``, ``rtp://HOST:PORT``."""
    s = settings.source
    if spec.startswith("rtp://"):
        from emomon.streamer.sources.rtp import RtpSource

        u = urlparse(spec)
        if not u.hostname or u.port is None:
            raise SourceError(f"RTP source needs rtp://HOST:PORT, got {spec!r}")
        return RtpSource(
            u.hostname,
            u.port,
            jitter_ms=s.rtp_jitter_ms,
            idle_timeout_s=s.rtp_idle_timeout_s,
            max_streams=s.rtp_max_streams,
            allow=s.rtp_allow,
            payload_types=s.rtp_payload_types,
            ssrc_names=s.rtp_ssrc_names,
            sdp_path=s.rtp_sdp,
            exit_when_idle_s=s.rtp_exit_when_idle_s,
        )
    if spec == "mic" or spec.startswith("mic:"):
        from emomon.streamer.sources.mic import MicSource

        dev: str | int | None = spec[4:] or None
        if isinstance(dev, str) and dev.isdigit():
            dev = int(dev)
        return MicSource(device=dev, channels=s.mic_channels, samplerate=s.mic_samplerate)
    from emomon.streamer.sources.file import FileSource

    path = spec[5:] if spec.startswith("file:") else spec
    return FileSource(path, realtime=s.realtime)


def default_session_id(spec: str) -> str:
    if spec.startswith("rtp://"):
        base = "rtp-" + urlparse(spec).netloc
    elif spec == "mic" or spec.startswith("mic:"):
        base = "mic"
    else:
        base = Path(spec[5:] if spec.startswith("file:") else spec).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "session"


def segmenter_config(settings: Settings) -> SegmenterConfig:
    v = settings.vad
    return SegmenterConfig(
        frame_ms=v.frame_ms,
        aggressiveness=v.aggressiveness,
        preroll_ms=v.preroll_ms,
        hangover_ms=v.hangover_ms,
        min_speech_ms=v.min_speech_ms,
        max_utterance_s=v.max_utterance_s,
    )


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
    a = settings.asr
    return TranscriberConfig(
        encoder_window=encoder_window(settings),
        model=a.model,
        device=a.device,
        compute_type=a.compute_type,
        beam_size=a.beam_size,
        language=a.language,
        cpu_threads=a.cpu_threads,
        workers=a.workers,
    )


def build_sinks(settings: Settings, sessions: Sequence[str] = ()) -> list[Sink]:
    from emomon.services.publish.console import ConsoleSink
    from emomon.services.publish.jsonl import JsonlSink

    sinks: list[Sink] = []
    if settings.console.enabled:
        sinks.append(ConsoleSink(color=settings.console.color, show_session=len(sessions) > 1))
    if settings.jsonl.path:
        sinks.append(JsonlSink(settings.jsonl.path))
    if settings.mqtt.url:
        from emomon.services.publish.mqtt import MqttSink

        sinks.append(MqttSink(settings.mqtt, sessions=sessions))
    return sinks


# -- speaker attribution stage -------------------------------------------------------------
@functools.cache
def shared_embedder():  # type: ignore[no-untyped-def]
    """One CAM++ model per process, shared by all sessions (it is thread-safe)."""
    from emomon.streamer.speakers import SpeakerEmbedder

    return SpeakerEmbedder()


@functools.cache
def shared_segmentation():  # type: ignore[no-untyped-def]
    """One segmentation model per process, shared by all sessions (it is thread-safe)."""
    from emomon.streamer.segmentation import SpeakerSegmentation

    return SpeakerSegmentation()


def clusters_speakers(settings: Settings, source: AudioSource) -> bool:
    """Whether ``source``'s channels get speaker clustering (else a channel is one speaker)."""
    sp = settings.speakers
    return sp.mode == "cluster" or (sp.mode == "auto" and source.multi_speaker_channels)


class SpeakerStage:
    """Labels segments; on multi-speaker channels it also cuts open segments at speaker changes."""

    def __init__(self, settings: Settings, source: AudioSource):
        sp = settings.speakers
        self.cluster = clusters_speakers(settings, source)
        self.sp = sp
        # Check as often as the finest detector needs.
        hops = [sp.hop_s]
        hops += [sp.change_hop_s] if sp.change_window_s else []
        hops += [sp.turn_hop_s] if sp.segmentation else []
        self.hop_s = min(hops)
        self._detectors: dict[str, object] = {}
        self._checked: dict[str, tuple[float, int]] = {}
        self.errors = 0
        if self.cluster:
            from emomon.streamer.speakers import OnlineSpeakerClustering

            set_torch_threads(settings.worker.torch_threads)
            self.embedder = shared_embedder()
            self.segmentation = shared_segmentation() if sp.segmentation else None
            self.clustering = OnlineSpeakerClustering(
                sp.similarity_threshold,
                sp.max_speakers,
                sp.provisional_s,
                num_speakers=sp.num_speakers,
            )

    def _detector(self, channel: str):  # type: ignore[no-untyped-def]
        from emomon.streamer.speakers import TurnDetector

        det = self._detectors.get(channel)
        if det is None:
            sp = self.sp
            det = self._detectors[channel] = TurnDetector(
                self.embedder,
                self.clustering,
                window_s=sp.window_s,
                hop_s=sp.hop_s,
                confirm=sp.confirm,
                change_window_s=sp.change_window_s or None,
                change_hop_s=sp.change_hop_s,
                change_confirm=sp.change_confirm,
                change_margin=sp.change_margin,
                segmentation=self.segmentation,
                turn_window_s=sp.turn_window_s,
                turn_hop_s=sp.turn_hop_s,
                turn_min_new_s=sp.turn_min_new_s,
                turn_max_new_s=sp.turn_max_new_s,
                turn_min_before_s=sp.turn_min_before_s,
            )
        return det

    async def maybe_cut(
        self, segmenter: Segmenter, channel: str, wall_end: float | None = None
    ) -> SpeechSegment | None:
        """Ask the turn detector about the open segment of ``channel`` (audio captured up to
        ``wall_end``); when the stage lags the audio by more than ``change_max_lag_ms``, the
        short windows are skipped this time (counted in ``short_skipped``)."""
        if not self.cluster:
            return None
        open_ = segmenter.open_audio(channel)
        if open_ is None:
            return None
        start_s, pcm = open_
        last = self._checked.get(channel)
        if (
            last is not None
            and last[0] == start_s
            and pcm.shape[0] - last[1] < self.hop_s * SAMPLE_RATE_HZ
        ):
            return None
        self._checked[channel] = (start_s, pcm.shape[0])
        try:
            fine = wall_end is None or (time.time() - wall_end) * 1000 <= self.sp.change_max_lag_ms
            cut_at = await asyncio.to_thread(self._detector(channel).update, start_s, pcm, fine)
        except Exception as e:  # noqa: BLE001 - attribution trouble must not end the session
            self.errors += 1
            log.error(
                "speaker turn detection failed on channel %s (%d so far): %s",
                channel,
                self.errors,
                e,
            )
            return None
        return segmenter.cut(channel, cut_at) if cut_at is not None else None

    async def label(self, seg: SpeechSegment) -> tuple[str, bool]:
        """(speaker label, provisional) of a closed segment."""
        if not self.cluster:
            return seg.speaker or f"ch{seg.channel}", False
        try:
            label = await asyncio.to_thread(
                self._detector(seg.channel).finish, seg.start_s, seg.pcm
            )
        except Exception as e:  # noqa: BLE001 - keep the utterance, mark who said it as unknown
            self.errors += 1
            log.error(
                "speaker attribution failed on channel %s (%d so far): %s",
                seg.channel,
                self.errors,
                e,
            )
            return f"ch{seg.channel}-unknown", True
        provisional = self.clustering.add_speech(label, seg.end_s - seg.start_s)
        return label, provisional


async def speech(
    chunks: AsyncIterator[AudioChunk],
    segmenter: Segmenter,
    speakers: SpeakerStage,
    stats: PipelineStats,
) -> AsyncIterator[tuple[SpeechSegment, str, bool, float]]:
    """VAD + speaker attribution: yields (segment, speaker, provisional, attribution seconds)."""

    async def labelled(seg: SpeechSegment) -> tuple[SpeechSegment, str, bool, float]:
        t0 = time.perf_counter()
        who, prov = await speakers.label(seg)
        stats.segments += 1
        return seg, who, prov, time.perf_counter() - t0

    async for chunk in chunks:
        stats.chunks += 1
        for seg in segmenter.feed(chunk):
            yield await labelled(seg)
        if not chunk.final:
            cut = await speakers.maybe_cut(segmenter, chunk.channel, chunk.wall_end)
            if cut is not None:
                yield await labelled(cut)
    for seg in segmenter.flush():
        yield await labelled(seg)


async def utterances(
    source: AudioSource,
    settings: Settings,
    session: str,
    transcriber: Transcriber,
    stats: PipelineStats,
) -> AsyncIterator[Utterance]:
    """The streamer half: one source in, transcribed utterances out (in order).

    VAD and speaker attribution run in their own task and hand each closed segment straight to
    the transcriber, so turn detection keeps listening while an utterance is transcribed (a
    slow transcription never delays finding where the next one ends). Utterances come out in
    the order they were spoken.
    """
    segmenter = Segmenter(segmenter_config(settings))
    speakers = SpeakerStage(settings, source)
    # A per-run part keeps utterance (and so event) ids unique when a live session restarts.
    run_id = uuid.uuid4().hex[:8]
    Item = tuple[SpeechSegment, str, bool, float, "asyncio.Future[Transcript]"]
    ready: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=64)

    async def front() -> None:
        try:
            async for seg, who, provisional, spk_s in speech(
                source.chunks(), segmenter, speakers, stats
            ):
                audio = seg.pcm.astype("float32") / 32768.0
                asr = asyncio.ensure_future(transcriber.transcribe(audio))
                await ready.put((seg, who, provisional, spk_s, asr))
        finally:
            await ready.put(None)

    task = asyncio.create_task(front(), name="speech")
    seq = 0
    try:
        while (item := await ready.get()) is not None:
            seg, who, provisional, spk_s, asr = item
            tr = await asr
            asr_s = max(0.0, time.time() - seg.detected_wall - spk_s)  # incl. waiting for a slot
            if not tr.text:
                stats.empty_transcripts += 1
            seq += 1
            stats.utterances += 1
            yield Utterance(
                session=session,
                speaker=who,
                channel=seg.channel,
                utterance_id=f"{session}:{run_id}:{seg.channel}:{seq:06d}",
                start_s=seg.start_s,
                end_s=seg.end_s,
                end_wall=seg.end_wall,
                pcm=seg.pcm,
                text=tr.text,
                language=tr.language,
                asr_confidence=tr.confidence,
                speaker_provisional=provisional,
                # end of speech -> segment closed (VAD hang-over or turn-change detection, plus
                # any time the audio waited in a backlog), then the stages that followed.
                timings={
                    "vad_hangover": max(0.0, seg.detected_wall - seg.end_wall),
                    "speaker": spk_s,
                    "asr": asr_s,
                },
                whisper_frames=tr.frames,
                whisper_window=tr.frames_window,
            )
        await task  # re-raises what ended the source (e.g. a decode error)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not ready.empty():  # abandoned transcriptions (forced stop)
            if (left := ready.get_nowait()) is not None:
                left[4].cancel()


# -- the embedded pipeline -----------------------------------------------------------------
class Pipeline:
    """Both halves in one process: sources -> ... -> in-process queue -> worker -> sinks."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        transcriber: Transcriber | None = None,
        worker: FusionWorker | None = None,
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
        self.delivery = Delivery(self.worker, self.sinks, self.context)
        self.stats = PipelineStats()
        self.queue = InProcessQueue(settings.worker.queue_size)

    async def _front(self, session: str, source: AudioSource) -> None:
        try:
            async for utt in utterances(
                source, self.settings, session, self.transcriber, self.stats
            ):
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
            self.stats.events_list.extend(events)

    def warm_up(self, cluster: bool) -> None:
        """Run each model once on a dummy input before audio flows: first calls allocate and
        initialise (measured: the first event of a fresh `emomon run` took 2.3 s, the next ones
        0.3-0.8 s), and that cost belongs to start-up, not to the first utterance."""
        from emomon.model import EmotionInput

        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(SAMPLE_RATE_HZ) * 0.01).astype(np.float32)
        tr = self.transcriber.transcribe_sync(noise)
        self.worker.model.predict([EmotionInput("hello", audio=noise, whisper_frames=tr.frames)])
        if cluster:
            set_torch_threads(self.settings.worker.torch_threads)
            shared_embedder()  # loads CAM++ and warms it (SpeakerEmbedder.__init__)
            if self.settings.speakers.segmentation:
                shared_segmentation()  # likewise

    async def run(
        self, sessions: Sequence[tuple[str, AudioSource]], stop: asyncio.Event | None = None
    ) -> PipelineStats:
        """Run until every source ends or ``stop`` is set; then drain within ``drain_timeout_s``.

        Sources stop first (no new audio), what was already heard is segmented, transcribed
        and classified, sinks are closed last. Errors of one source end that session only.
        """
        stop = stop or asyncio.Event()
        if self.settings.warm_up:
            cluster = any(clusters_speakers(self.settings, src) for _, src in sessions)
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
