"""Voice activity segmentation with webrtcvad: audio chunks in, speech segments out.

Per channel, a small state machine runs over fixed VAD frames (10/20/30 ms):

* **onset**: speech starts when ``onset_frames`` of the last ``onset_window`` frames are voiced;
  the segment then starts ``preroll_ms`` before the first voiced frame of that window, so
  Whisper hears the attack of the first word;
* **hang-over**: speech ends after ``hangover_ms`` of consecutive unvoiced frames; the segment
  ends at the last voiced frame plus a short tail;
* **cap**: a segment longer than ``max_utterance_s`` is cut there and a new one starts at once;
* bursts shorter than ``min_speech_ms`` of voiced audio are dropped (clicks, coughs);
* **end of turn**: at the first ``end_of_turn_pause_ms`` of a pause the channel leaves a
  :class:`TurnQuestion` (the audio so far); whoever answers it (:mod:`emomon.streamer.end_of_turn`)
  may close the segment then with :meth:`Segmenter.close_turn`, before the hang-over runs out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import numpy as np
import webrtcvad

from emomon.streamer.config import SegmenterConfig
from emomon.streamer.sources.base import AudioChunk
from emomon.streamer.utterance import SAMPLE_RATE_HZ

TAIL_MS = 150  # unvoiced audio kept after the last voiced frame


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """A stretch of speech on one channel. ``detected_wall`` is when the segmenter closed it;
    ``end_wall`` is the wall-clock time of the end of speech (from the chunks' capture times,
    or ``detected_wall - hangover_s`` when the source did not give them)."""

    channel: str
    start_s: float
    end_s: float  # end of the last voiced frame (end of speech)
    pcm: np.ndarray = field(repr=False)  # int16 16 kHz, preroll .. end + tail
    detected_wall: float
    hangover_s: float  # stream time between end of speech and detection
    speaker: str | None = None
    forced_split: bool = False
    end_wall: float = 0.0


@dataclass(frozen=True, slots=True)
class Draft:
    """The open segment of ``channel`` as it will close if nothing more is said: left at the
    first ``early_asr_ms`` of a pause, so the ASR can start while the hang-over runs."""

    channel: str
    start_s: float
    end_s: float  # end of the last voiced frame
    pcm: np.ndarray = field(repr=False)  # exactly what the closed segment will hold
    speaker: str | None = None  # the channel's speaker, when the source names it


@dataclass(frozen=True, slots=True)
class TurnQuestion:
    """Is the open segment of ``channel`` a finished turn? Asked once per pause."""

    channel: str
    pcm: np.ndarray = field(repr=False)  # int16 16 kHz, segment start .. now (pause included)
    token: tuple[float, int] = (0.0, 0)  # (segment start, pause number): still the same pause?


class _ChannelState:
    def __init__(self, cfg: SegmenterConfig, vad: webrtcvad.Vad, channel: str):
        self.cfg = cfg
        self.vad = vad
        self.channel = channel
        self.frame = SAMPLE_RATE_HZ * cfg.frame_ms // 1000
        self.buf = np.zeros(0, dtype=np.int16)  # samples not yet framed
        self.buf_start_s: float | None = None
        self.pre: deque[tuple[float, np.ndarray, bool]] = deque(
            maxlen=max(
                cfg.onset_window, int(np.ceil(cfg.preroll_ms / cfg.frame_ms)) + cfg.onset_window
            )
        )
        self.active = False
        self.frames: list[np.ndarray] = []
        self.flags: list[bool] = []  # voiced flag per frame of the open segment
        self.seg_start_s = 0.0
        self.last_voiced_end_s = 0.0
        self.voiced_s = 0.0
        self.silent_run = 0
        self.pauses = 0  # pauses begun in this channel (identifies the current one)
        self.question: TurnQuestion | None = None
        self.draft: Draft | None = None
        self.speaker: str | None = None
        self.clock: tuple[float, float] | None = (
            None  # (stream time, wall time) of the last chunk end
        )

    def wall_at(self, t_s: float, now_s: float) -> float:
        """Wall-clock time at which stream time ``t_s`` was captured (``now_s``: processed up to)."""
        if self.clock is not None:
            return self.clock[1] - (self.clock[0] - t_s)
        return time.time() - max(0.0, now_s - t_s)

    def feed(self, chunk: AudioChunk) -> list[SpeechSegment]:
        out: list[SpeechSegment] = []
        if chunk.speaker is not None:
            self.speaker = chunk.speaker
        if chunk.wall_end is not None:
            self.clock = (chunk.end_s, chunk.wall_end)
        if self.buf_start_s is None or self.buf.size == 0:
            self.buf_start_s = chunk.start_s
        self.buf = np.concatenate([self.buf, chunk.pcm.astype(np.int16, copy=False)])
        n_frames = self.buf.size // self.frame
        for i in range(n_frames):
            f = self.buf[i * self.frame : (i + 1) * self.frame]
            t = self.buf_start_s + i * self.cfg.frame_ms / 1000
            seg = self._frame(t, f)
            if seg is not None:
                out.append(seg)
        used = n_frames * self.frame
        self.buf = self.buf[used:]
        self.buf_start_s += used / SAMPLE_RATE_HZ
        if chunk.final:
            seg = self.flush()
            if seg is not None:
                out.append(seg)
        return out

    def _frame(self, t: float, f: np.ndarray) -> SpeechSegment | None:
        cfg = self.cfg
        voiced = self.vad.is_speech(f.tobytes(), SAMPLE_RATE_HZ)
        dur = cfg.frame_ms / 1000
        if not self.active:
            self.pre.append((t, f, voiced))
            recent = list(self.pre)[-cfg.onset_window :]
            if sum(v for _, _, v in recent) >= cfg.onset_frames:
                first_voiced = next(i for i, (_, _, v) in enumerate(recent) if v)
                onset_t = recent[first_voiced][0]
                keep = [
                    (tt, ff, v)
                    for tt, ff, v in self.pre
                    if tt >= onset_t - cfg.preroll_ms / 1000 - 1e-9
                ]
                self.active = True
                self.frames = [ff for _, ff, _ in keep]
                self.flags = [v for _, _, v in keep]
                self.seg_start_s = keep[0][0]
                self.voiced_s = sum(dur for _, _, v in recent if v)
                self.last_voiced_end_s = t + dur
                self.silent_run = 0
                self.pre.clear()
            return None
        self.frames.append(f)
        self.flags.append(voiced)
        if voiced:
            self.voiced_s += dur
            self.last_voiced_end_s = t + dur
            self.silent_run = 0
        else:
            self.silent_run += 1
            if self.silent_run == 1:
                self.pauses += 1
            if (
                self.silent_run * cfg.frame_ms >= cfg.end_of_turn_pause_ms > 0
                and (self.silent_run - 1) * cfg.frame_ms < cfg.end_of_turn_pause_ms
                and self.voiced_s * 1000 >= cfg.min_speech_ms
            ):
                self.question = TurnQuestion(
                    self.channel, np.concatenate(self.frames), (self.seg_start_s, self.pauses)
                )
            early = cfg.early_asr_ms
            if (
                early > 0
                and self.silent_run * cfg.frame_ms >= early
                and (self.silent_run - 1) * cfg.frame_ms < early
                and self.voiced_s * 1000 >= cfg.min_speech_ms
            ):
                pcm = self._pcm_until(t + dur)
                self.draft = Draft(
                    self.channel, self.seg_start_s, self.last_voiced_end_s, pcm, self.speaker
                )
        if self.silent_run * cfg.frame_ms >= cfg.hangover_ms:
            return self._close(t + dur, forced=False)
        if (
            t + 2 * dur
        ) - self.seg_start_s > cfg.max_utterance_s + 1e-9:  # next frame would pass the cap
            seg = self._close(t + dur, forced=True)
            # Speech goes on: the next segment starts right here, without a new onset.
            self.active = True
            self.frames = []
            self.flags = []
            self.seg_start_s = t + dur
            self.last_voiced_end_s = t + dur
            self.voiced_s = 0.0
            return seg
        return None

    def _pcm_until(self, now_s: float, end_s: float | None = None) -> np.ndarray:
        """The open segment's audio as a segment closed at ``now_s`` holds it: up to the end of
        speech (default: the last voiced frame) plus the tail, at most up to ``now_s``."""
        end_s = self.last_voiced_end_s if end_s is None else end_s
        keep_until = min(now_s, end_s + TAIL_MS / 1000)
        pcm = np.concatenate(self.frames) if self.frames else np.zeros(0, dtype=np.int16)
        return pcm[: int(round((keep_until - self.seg_start_s) * SAMPLE_RATE_HZ))]

    def _close(self, now_s: float, forced: bool) -> SpeechSegment | None:
        cfg = self.cfg
        self.active = False
        self.question = None
        self.draft = None
        end_s = now_s if forced else self.last_voiced_end_s
        pcm = self._pcm_until(now_s, end_s)
        voiced_s = self.voiced_s
        self.frames = []
        self.flags = []
        self.voiced_s = 0.0
        self.silent_run = 0
        if voiced_s * 1000 < cfg.min_speech_ms or pcm.size == 0:
            return None
        return SpeechSegment(
            channel=self.channel,
            start_s=self.seg_start_s,
            end_s=end_s,
            pcm=pcm,
            detected_wall=time.time(),
            hangover_s=max(0.0, now_s - end_s),
            speaker=self.speaker,
            forced_split=forced,
            end_wall=self.wall_at(end_s, now_s),
        )

    def close_turn(self, token: tuple[float, int]) -> SpeechSegment | None:
        """Close the open segment now if it is still in the pause ``token`` names."""
        if not self.active or self.silent_run == 0 or token != (self.seg_start_s, self.pauses):
            return None
        return self._close(self.seg_start_s + len(self.frames) * self.cfg.frame_ms / 1000, False)

    def open_audio(self) -> tuple[float, np.ndarray] | None:
        """(start_s, pcm so far) of the open segment, or None when no speech is open."""
        if not self.active or not self.frames:
            return None
        return self.seg_start_s, np.concatenate(self.frames)

    def cut(self, at_s: float) -> SpeechSegment | None:
        """Close the open segment at ``at_s`` (a speaker change) and keep the rest open."""
        if not self.active:
            return None
        dur = self.cfg.frame_ms / 1000
        k = int(round((at_s - self.seg_start_s) / dur))
        if k <= 0 or k >= len(self.frames):
            return None
        now_s = self.seg_start_s + len(self.frames) * dur
        rest_frames, rest_flags = self.frames[k:], self.flags[k:]
        first_flags = self.flags[:k]
        cut_s = self.seg_start_s + k * dur
        self.frames, self.flags = self.frames[:k], first_flags
        self.voiced_s = sum(first_flags) * dur
        seg = self._close(cut_s, forced=True)
        if seg is not None:
            seg = replace(
                seg, hangover_s=max(0.0, now_s - cut_s), end_wall=self.wall_at(cut_s, now_s)
            )
        self.active = True
        self.frames, self.flags = rest_frames, rest_flags
        self.seg_start_s = cut_s
        self.voiced_s = sum(rest_flags) * dur
        self.last_voiced_end_s = max(self.last_voiced_end_s, cut_s)
        return seg

    def flush(self) -> SpeechSegment | None:
        """End of stream: close an open segment (its hang-over is cut short by the end)."""
        if not self.active:
            return None
        end = self.last_voiced_end_s
        return self._close(
            max(end, self.seg_start_s + len(self.frames) * self.cfg.frame_ms / 1000), forced=False
        )


class Segmenter:
    """Splits each channel's audio into speech segments (see the module docstring)."""

    def __init__(self, config: SegmenterConfig | None = None):
        self.config = config or SegmenterConfig()
        self._channels: dict[str, _ChannelState] = {}

    def _state(self, channel: str) -> _ChannelState:
        st = self._channels.get(channel)
        if st is None:
            vad = webrtcvad.Vad(self.config.aggressiveness)
            st = self._channels[channel] = _ChannelState(self.config, vad, channel)
        return st

    def feed(self, chunk: AudioChunk) -> list[SpeechSegment]:
        st = self._state(chunk.channel)
        out = st.feed(chunk)
        if chunk.final:
            del self._channels[chunk.channel]
        return out

    def turn_questions(self) -> list[TurnQuestion]:
        """The questions channels left since the last call (at most one per channel)."""
        return self._take("question")

    def drafts(self) -> list[Draft]:
        """The drafts channels left since the last call (at most one per channel)."""
        return self._take("draft")

    def _take(self, attr: str) -> list:  # type: ignore[type-arg]
        """Each channel's ``attr`` that is set, cleared as it is taken."""
        out = []
        for st in self._channels.values():
            if (item := getattr(st, attr)) is not None:
                out.append(item)
                setattr(st, attr, None)
        return out

    def close_turn(self, question: TurnQuestion) -> SpeechSegment | None:
        """Close the segment ``question`` asked about, if its pause still goes on."""
        st = self._channels.get(question.channel)
        return st.close_turn(question.token) if st else None

    def open_audio(self, channel: str) -> tuple[float, np.ndarray] | None:
        st = self._channels.get(channel)
        return st.open_audio() if st else None

    def cut(self, channel: str, at_s: float) -> SpeechSegment | None:
        st = self._channels.get(channel)
        return st.cut(at_s) if st else None

    def flush(self) -> list[SpeechSegment]:
        out = [seg for st in self._channels.values() if (seg := st.flush()) is not None]
        self._channels.clear()
        return out

    async def segments(self, chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[SpeechSegment]:
        """The async stage: chunks in, segments out, open segments flushed when the input ends."""
        async for chunk in chunks:
            for seg in self.feed(chunk):
                yield seg
        for seg in self.flush():
            yield seg
