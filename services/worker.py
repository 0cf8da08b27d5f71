"""The fusion worker: utterances in, one ``EmotionEvent`` per utterance out.

It loads the emotion checkpoint once, classifies what is waiting as one batch (the model runs
in a worker thread, never on the event loop); the delivery stage hands the events on. Used by the
embedded pipeline (in-process queue) and by ``emomon worker`` (Redis Streams).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from emomon.services.context import ContextEntry, ContextStore
from emomon.services.delivery import context_store_for
from emomon.services.events import EmotionEvent, iso_time
from emomon.services.settings import WorkerSettings
from emomon.streamer.config import set_torch_threads
from emomon.streamer.utterance import Utterance

log = logging.getLogger(__name__)


class EmotionClassifier(Protocol):
    """What the worker needs of ``emomon.model.EmotionModel``."""

    labels: tuple[str, ...]
    model_id: str

    def predict(self, batch: Sequence[Any]) -> list[Any]: ...


class WorkerError(RuntimeError):
    """The fusion worker cannot start (e.g. the emotion checkpoint cannot be loaded)."""


def load_model(settings: WorkerSettings) -> EmotionClassifier:
    from emomon.model import EmotionModel, ModelError

    try:
        return EmotionModel.load(settings.checkpoint, device=settings.device)
    except (ModelError, OSError) as e:
        where = settings.checkpoint or "the shipped checkpoint"
        raise WorkerError(f"cannot load the emotion model from {where}: {e}") from e


class FusionWorker:
    """Classifies batches of utterances and publishes the events."""

    def __init__(
        self,
        settings: WorkerSettings,
        model: EmotionClassifier | None = None,
        context: ContextStore | None = None,
    ):
        self.settings = settings
        set_torch_threads(settings.torch_threads)
        self.model = model if model is not None else load_model(settings)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusion")
        self.batches = 0
        self.events = 0
        # Whisper frames made with another encoder window than the checkpoint was trained on
        # are not used (the model recomputes them from the PCM): counted, logged once.
        cfg = getattr(self.model, "cfg", None)
        self.frames_window: str | None = getattr(
            self.model, "frames_recipe", getattr(cfg, "whisper_window", None)
        )
        self.frames_recomputed = 0
        # Conversation context: earlier turns come from ``context`` (the pipeline's or Redis's
        # store, which the delivery stage appends to after publishing).
        self.context = context_store_for(settings, self.model, context)
        ctx_model = getattr(self.model, "context", None)
        mem_dim = getattr(self.model, "memory_dim", getattr(ctx_model, "memory_dim", 0))
        self._memory_bytes = 2 * int(mem_dim or 0)
        if settings.min_confidence is not None and hasattr(self.model, "min_confidence"):
            self.model.min_confidence = settings.min_confidence  # below it: "uncertain"
        self.text_languages = frozenset(settings.text_languages)
        self.text_dropped: dict[str, int] = {}  # language -> utterances read without text
        self.no_speech = 0  # utterances the streamer marked as noise
        self.context_errors = 0  # store reads that failed (classified without context)
        self.context_skipped = 0  # stored turns whose memory does not fit this model

    def use_context(self, store: ContextStore) -> ContextStore | None:
        """Read earlier turns from ``store`` unless a store was given at construction; return
        the store in use (None: this worker classifies without context)."""
        if self.context is None:
            self.context = context_store_for(self.settings, self.model, store)
        return self.context

    async def histories(self, utts: Sequence[Utterance]) -> list[tuple[Any, ...]]:
        """Each utterance's earlier turns (oldest first) from the context store; a store that
        fails is logged and counted, and the batch is classified without context."""
        if self.context is None:
            return [()] * len(utts)
        import numpy as np

        from emomon.model.context import ContextTurn

        entries: dict[str, list[ContextEntry]] = {}
        for s in dict.fromkeys(u.session for u in utts):
            try:
                entries[s] = await self.context.recent(s)
            except Exception as e:  # noqa: BLE001 - Redis down must not stop classification
                self.context_errors += 1
                log.warning("context store read for session %s failed: %s", s, e)
                entries[s] = []
        out: list[tuple[Any, ...]] = []
        for u in utts:
            turns = []
            # one turn per utterance id: a redelivered utterance may have been stored twice
            latest = {t.utterance_id: t for t in entries[u.session]}
            for t in sorted(latest.values(), key=lambda t: t.end_s):
                if t.utterance_id == u.utterance_id or t.end_s > u.end_s or not t.memory:
                    continue
                if len(t.memory) != self._memory_bytes:
                    self.context_skipped += 1
                    continue
                turns.append(
                    ContextTurn(np.frombuffer(t.memory, np.float16), t.speaker == u.speaker)
                )
            out.append(tuple(turns))
        return out

    def _inputs(
        self, utts: Sequence[Utterance], histories: Sequence[tuple[Any, ...]] | None = None
    ) -> list[Any]:
        from emomon.model import EmotionInput

        out = []
        for i, u in enumerate(utts):
            text = u.text if self.settings.use_text and u.text.strip() else None
            if text is not None and not self._reads_language(u):
                text = None  # the text branch was not trained on this language
            if u.no_speech:
                text = None
            audio = u.audio_float32() if self.settings.use_audio and u.pcm.size else None
            frames = u.whisper_frames if audio is not None else None
            made_with = u.whisper_window or "full"
            if frames is not None and self.frames_window not in (None, made_with):
                if not self.frames_recomputed:
                    log.warning(
                        "utterance frames were made with encoder window %r, the emotion "
                        "checkpoint expects %r: recomputing them (slow); set "
                        "asr.encoder_window=auto",
                        made_with,
                        self.frames_window,
                    )
                self.frames_recomputed += 1
                frames = None
            ctx = self.context is not None
            out.append(
                EmotionInput(
                    text=text,
                    audio=audio,
                    whisper_frames=frames,
                    history=histories[i] if histories is not None else (),
                    session=u.session if ctx else None,
                    speaker=u.speaker if ctx else None,
                )
            )
        return out

    def _reads_language(self, u: Utterance) -> bool:
        """Whether the emotion model may read this utterance's transcript (unknown language:
        yes, as before languages were detected)."""
        lang = u.language
        if lang is None or lang in self.text_languages:
            return True
        if lang not in self.text_dropped:
            log.warning(
                "transcripts in %r (first: session %s) are classified from audio alone: the "
                "emotion model reads text in %s only (worker.text_languages)",
                lang,
                u.session,
                ", ".join(sorted(self.text_languages)) or "no language",
            )
        self.text_dropped[lang] = self.text_dropped.get(lang, 0) + 1
        return False

    def classify_sync(
        self, utts: Sequence[Utterance], histories: Sequence[tuple[Any, ...]] | None = None
    ) -> list[EmotionEvent]:
        if not utts:
            return []
        t0 = time.perf_counter()
        preds = self.model.predict(self._inputs(utts, histories))
        fusion_s = time.perf_counter() - t0
        now = time.time()
        events = []
        for u, p in zip(utts, preds, strict=True):
            outcome = str(getattr(p, "outcome", "emotion") or "emotion")
            label, memory = p.label, getattr(p, "memory", None)
            if u.no_speech:  # noise (issue 18.4): no emotion claimed, nothing for the context
                self.no_speech += 1
                outcome = label = "no_speech"
                memory = None
            stages = {k: v * 1000 for k, v in u.timings.items()}
            stages["fusion"] = fusion_s * 1000
            origin = u.origin_wall
            events.append(
                EmotionEvent(
                    session=u.session,
                    speaker=u.speaker,
                    utterance_id=u.utterance_id,
                    channel=u.channel,
                    start_s=u.start_s,
                    end_s=u.end_s,
                    label=label,
                    confidence=float(p.confidence),
                    probabilities={k: float(v) for k, v in p.probabilities.items()},
                    modalities=tuple(p.modalities),
                    model_id=self.model.model_id,
                    latency_ms=max(0.0, (now - u.end_wall) * 1000) if u.live else None,
                    stage_ms=stages,
                    text=u.text if self.settings.include_text else None,
                    language=u.language,
                    speaker_provisional=u.speaker_provisional,
                    context_turns=int(getattr(p, "context_turns", 0) or 0),
                    outcome=outcome,
                    top_label=str(getattr(p, "top_label", "") or p.label),
                    session_started_at=iso_time(origin),
                    started_at=iso_time(None if origin is None else origin + u.start_s),
                    ended_at=iso_time(None if origin is None else origin + u.end_s),
                    memory=memory.tobytes() if memory is not None else None,
                )
            )
        self.batches += 1
        self.events += len(events)
        return events

    async def classify(self, utts: Sequence[Utterance]) -> list[EmotionEvent]:
        utts = list(utts)
        hist = await self.histories(utts) if self.context is not None else None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.classify_sync, utts, hist)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
