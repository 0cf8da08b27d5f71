"""The streamer half, chained in one visible place:

    source.chunks() -> speech(): VAD segmenter + SpeakerStage -> transcriber -> Utterance

:func:`utterances` is what ``emomon stream`` sends to the queue and what the embedded pipeline
hands to its worker. Each stage takes its config whole
(:mod:`emomon.streamer.config`); the speaker models load lazily, only for channels that are
clustered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from emomon.streamer.config import SpeakerConfig, StreamerConfig, set_torch_threads
from emomon.streamer.end_of_turn import EndOfTurn
from emomon.streamer.segmenter import Draft, Segmenter, SpeechSegment
from emomon.streamer.sources.base import AudioChunk, AudioSource
from emomon.streamer.transcriber import Transcriber, Transcript
from emomon.streamer.utterance import SAMPLE_RATE_HZ, Utterance

if TYPE_CHECKING:
    from emomon.streamer.segmentation import SpeakerSegmentation
    from emomon.streamer.speakers import SpeakerEmbedder, TurnDetector

log = logging.getLogger(__name__)


@dataclass
class StreamStats:
    """Counters of the streamer half of one run (read by the CLI and benchmarks)."""

    chunks: int = 0
    segments: int = 0
    utterances: int = 0
    empty_transcripts: int = 0
    turn_questions: int = 0  # pauses the end-of-turn model was asked about
    early_closes: int = 0  # utterances it closed before the hang-over ran out
    no_speech: int = 0  # segments marked as noise (no text, no emotion label)
    early_asr: int = 0  # transcriptions started early, while a pause's hang-over ran
    early_asr_used: int = 0  # ... whose segment then closed with nothing more said
    foreign_language: int = 0  # speech in a language the ASR model does not write: no text


@functools.cache
def shared_embedder(runtime: Literal["auto", "torch"] = "auto") -> SpeakerEmbedder:
    """One CAM++ model per process, shared by all sessions (it is thread-safe)."""
    from emomon.streamer.speakers import SpeakerEmbedder

    return SpeakerEmbedder(runtime=runtime)


@functools.cache
def shared_segmentation(runtime: Literal["auto", "torch"] = "auto") -> SpeakerSegmentation:
    """One segmentation model per process, shared by all sessions (it is thread-safe)."""
    from emomon.streamer.segmentation import SpeakerSegmentation

    return SpeakerSegmentation(runtime=runtime)


class LoadSignal:
    """How far turn detection is behind the audio.

    Two levels. *Behind* is per session and per update (it lags the audio by more than
    ``change_max_lag_ms``): its short windows are skipped this time, as before. *Far behind*
    is judged for the whole process, because sessions share its CPU: once any session lags by
    more than ``FAR_FACTOR`` times that limit, every session counts as far behind until
    ``HOLD_S`` after the last such lag, and with ``turns_from = auto`` its embedding windows
    then only name who speaks while the frames alone find turns. (Holding the first level for
    all sessions too cost speaker agreement at 4 parallel calls, 0.85 -> 0.70-0.73, because the
    short windows find most turn changes; at 8 calls the hold on the second level is what
    stops sessions from switching back to the costly windows as soon as they catch up.)"""

    HOLD_S = 2.0
    FAR_FACTOR = 4.0

    def __init__(self) -> None:
        self.far_at = float("-inf")  # wall time at which some session was last far behind
        self.behind_at = float("-inf")  # ... last behind at all

    def level(self, lag_ms: float, max_lag_ms: float, now: float) -> tuple[bool, bool]:
        """(fine, far behind) for a session that lags the audio by ``lag_ms`` now."""
        if lag_ms > max_lag_ms:
            self.behind_at = now
        if lag_ms > self.FAR_FACTOR * max_lag_ms:
            self.far_at = now
        return lag_ms <= max_lag_ms, now - self.far_at <= self.HOLD_S

    def behind(self, now: float | None = None) -> bool:
        """Whether some session lagged the audio within the last ``HOLD_S``: the process is
        loaded, so optional work (a language re-measurement) waits for a quieter moment."""
        now = time.time() if now is None else now
        return now - self.behind_at <= self.HOLD_S


#: shared by every session of the process (they share its CPU)
LOAD = LoadSignal()


def _quiet(fut: asyncio.Future[Transcript]) -> None:
    """A discarded early transcription's error is not news (the segment is transcribed again)."""
    if not fut.cancelled():
        fut.exception()


def clusters_speakers(mode: str, source: AudioSource) -> bool:
    """Whether ``source``'s channels get speaker clustering (else a channel is one speaker)."""
    return mode == "cluster" or (mode == "auto" and source.multi_speaker_channels)


class SpeakerStage:
    """Labels segments; on multi-speaker channels it also cuts open segments at speaker changes."""

    def __init__(self, config: SpeakerConfig, source: AudioSource, torch_threads: int = 0):
        self.config = config
        self.cluster = clusters_speakers(config.mode, source)
        # Check as often as the finest detector needs.
        if config.segmentation and config.turns_from == "frames":  # windows only name speakers
            hops = [config.name_hop_s, config.turn_hop_s]
        else:
            hops = [config.hop_s]
            hops += [config.change_hop_s] if config.change_window_s else []
            hops += [config.turn_hop_s] if config.segmentation else []
        self.hop_s = min(hops)
        # Only a real-time source can fall behind; a file read as fast as possible cannot.
        self.realtime = bool(getattr(source, "realtime", True))
        self._detectors: dict[str, TurnDetector] = {}
        self._checked: dict[str, tuple[float, int]] = {}
        self.errors = 0
        if self.cluster:
            from emomon.streamer.speakers import OnlineSpeakerClustering

            set_torch_threads(torch_threads)
            self.embedder = shared_embedder(config.runtime)
            self.segmentation = shared_segmentation(config.runtime) if config.segmentation else None
            self.clustering = OnlineSpeakerClustering(config)

    def _detector(self, channel: str) -> TurnDetector:
        from emomon.streamer.speakers import TurnDetector

        det = self._detectors.get(channel)
        if det is None:
            det = self._detectors[channel] = TurnDetector(
                self.embedder, self.clustering, self.config, self.segmentation
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
        max_lag_ms = self.config.change_max_lag_ms
        try:
            now = time.time()
            fine, far = True, False
            if wall_end is not None and self.realtime:
                fine, far = LOAD.level((now - wall_end) * 1000, max_lag_ms, now)
            cut_at = await asyncio.to_thread(
                self._detector(channel).update, start_s, pcm, fine, far
            )
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

    def guess(self, channel: str, start_s: float) -> str | None:
        """The label the open segment of ``channel`` (begun at ``start_s``) will most likely
        get, from the turn detector's windows so far; None when not known (yet)."""
        if not self.cluster:
            return None
        det = self._detectors.get(channel)
        return det.current(start_s) if det is not None else None

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
    stats: StreamStats,
    end_of_turn: EndOfTurn | None = None,
    on_draft: Callable[[Draft], None] | None = None,
) -> AsyncIterator[tuple[SpeechSegment, str, bool, float]]:
    """VAD (+ end-of-turn model) + speaker attribution: yields (segment, speaker, provisional,
    attribution seconds); hands each draft the segmenter leaves to ``on_draft``."""

    async def labelled(seg: SpeechSegment) -> tuple[SpeechSegment, str, bool, float]:
        t0 = time.perf_counter()
        who, prov = await speakers.label(seg)
        stats.segments += 1
        return seg, who, prov, time.perf_counter() - t0

    async for chunk in chunks:
        stats.chunks += 1
        for seg in segmenter.feed(chunk):
            yield await labelled(seg)
        for draft in segmenter.drafts():
            if on_draft is not None:
                on_draft(draft)
        if end_of_turn is not None:
            asked = end_of_turn.asked
            early = await end_of_turn.close_early(segmenter)
            stats.turn_questions += end_of_turn.asked - asked
            stats.early_closes += len(early)
            for seg in early:
                yield await labelled(seg)
        if not chunk.final:
            cut = await speakers.maybe_cut(segmenter, chunk.channel, chunk.wall_end)
            if cut is not None:
                yield await labelled(cut)
    for seg in segmenter.flush():
        yield await labelled(seg)


async def utterances(
    source: AudioSource,
    config: StreamerConfig,
    session: str,
    transcriber: Transcriber,
    stats: StreamStats,
) -> AsyncIterator[Utterance]:
    """The streamer half: one source in, transcribed utterances out (in order).

    VAD and speaker attribution run in their own task and hand each closed segment straight to
    the transcriber, so turn detection keeps listening while an utterance is transcribed (a
    slow transcription never delays finding where the next one ends). Utterances come out in
    the order they were spoken.
    """
    segmenter = Segmenter(config.vad)
    end_of_turn = EndOfTurn(config.vad)
    transcriber.load_hint = LOAD.behind  # turn detection lagging: no optional language checks
    speakers = SpeakerStage(config.speakers, source, config.torch_threads)
    # A per-run part keeps utterance (and so event) ids unique when a live session restarts.
    run_id = uuid.uuid4().hex[:8]
    Item = tuple[SpeechSegment, str, bool, float, "asyncio.Future[Transcript]"]
    ready: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=64)

    # A source that knows when each stretch of audio arrived (RTP: per packet) dates the end of
    # speech by it, not by interpolating the clock of the last chunk, which may be silence
    # released after the speech (issue #15).
    arrival_of = getattr(source, "arrival_of", None)

    # Early transcription (vad.early_asr_ms): at the first pause of that length the speech so
    # far goes to an idle ASR while the hang-over runs. If the segment then closes with the same
    # audio (nothing more said) and the same speaker, its transcript is ready or on the way; if
    # speech resumes, it is discarded. The speaker (whose language the ASR tracks) is the
    # channel's on one-speaker channels (RTP streams, stereo files); on a clustered channel it
    # is the one the turn detector's windows name so far, and a segment that is then labelled
    # otherwise is transcribed again.
    drafts: dict[str, tuple[Draft, str, asyncio.Future[Transcript]]] = {}

    def on_draft(draft: Draft) -> None:
        who = draft.speaker or f"ch{draft.channel}"
        if speakers.cluster:
            who = speakers.guess(draft.channel, draft.start_s) or ""
        stream = f"{session}/{who}"
        if not who or not transcriber.idle_for(stream):
            drafts.pop(draft.channel, None)
            return
        audio = draft.pcm.astype("float32") / 32768.0
        fut = asyncio.ensure_future(transcriber.transcribe(audio, stream, speculative=True))
        fut.add_done_callback(_quiet)
        drafts[draft.channel] = (draft, stream, fut)
        stats.early_asr += 1

    def early(seg: SpeechSegment, stream: str) -> asyncio.Future[Transcript] | None:
        got = drafts.pop(seg.channel, None)
        if got is None:
            return None
        draft, draft_stream, fut = got
        same = (
            draft.start_s == seg.start_s
            and draft.end_s == seg.end_s
            and draft.pcm.shape == seg.pcm.shape
            and draft_stream == stream
            and not fut.cancelled()
        )
        stats.early_asr_used += same
        return fut if same else None

    async def front() -> None:
        try:
            async for seg, who, provisional, spk_s in speech(
                source.chunks(),
                segmenter,
                speakers,
                stats,
                end_of_turn,
                on_draft if config.vad.early_asr_ms else None,
            ):
                if arrival_of is not None and (at := arrival_of(seg.channel, seg.end_s)):
                    seg = dataclasses.replace(seg, end_wall=at)
                # the stream whose language is tracked: one speaker of one session
                stream = f"{session}/{who}"
                asr = early(seg, stream)
                if asr is None:
                    audio = seg.pcm.astype("float32") / 32768.0
                    asr = asyncio.ensure_future(transcriber.transcribe(audio, stream))
                await ready.put((seg, who, provisional, spk_s, asr))
        finally:
            await ready.put(None)

    task = asyncio.create_task(front(), name="speech")
    seq = 0
    live = bool(getattr(source, "realtime", True))
    try:
        while (item := await ready.get()) is not None:
            seg, who, provisional, spk_s, asr = item
            tr = await asr
            asr_s = max(0.0, time.time() - seg.detected_wall - spk_s)  # incl. waiting for a slot
            if not tr.text:
                stats.empty_transcripts += 1
            stats.no_speech += tr.no_speech
            stats.foreign_language += tr.text_dropped == "language"
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
                origin_wall=getattr(source, "origin_wall", None),
                live=live,
                no_speech=tr.no_speech,
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
        if stats.no_speech or stats.foreign_language:
            log.info(
                "after session %s: %d noise segments marked no_speech, %d utterances in a language "
                "the ASR model does not write (no transcript)",
                session,
                stats.no_speech,
                stats.foreign_language,
            )
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not ready.empty():  # abandoned transcriptions (forced stop)
            if (left := ready.get_nowait()) is not None:
                left[4].cancel()
