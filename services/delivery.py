"""The delivery stage: classify a batch, publish the events, remember them, count (issue #19).

The embedded pipeline (in-process queue) and the Redis worker both hand their batches to one
:class:`Delivery`; what differs between them is only what they do with the
:class:`DeliveryResult`: the pipeline records it in its run statistics, the Redis worker acks
the entries of a delivered batch and leaves the rest pending for redelivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from emomon.services.context import ContextStore
from emomon.services.events import EmotionEvent
from emomon.services.metrics import Metrics
from emomon.services.publish.base import Sink
from emomon.services.settings import WorkerSettings
from emomon.streamer.utterance import Utterance

log = logging.getLogger(__name__)


class Classifier(Protocol):
    """What delivery needs of the fusion worker (``emomon.services.worker.FusionWorker``)."""

    async def classify(self, utts: Sequence[Utterance]) -> list[EmotionEvent]: ...


def context_store_for(
    settings: WorkerSettings, model: object, store: ContextStore | None
) -> ContextStore | None:
    """``store`` if the model should read each session's earlier turns from it, else None.

    The one place that decides whether conversation context is used: the worker settings ask
    for it and the model has a context head (a checkpoint without one classifies turns alone).
    """
    if store is None or not settings.context or getattr(model, "context", None) is None:
        return None
    return store


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one batch.

    ``delivered`` holds when every utterance got an event and every sink took every event; only
    then may a transport with at-least-once semantics forget the batch.
    """

    events: tuple[EmotionEvent, ...] = ()
    classify_error: Exception | None = None  # the classifier raised: nothing was published
    missing_utterance_ids: tuple[str, ...] = ()  # the classifier gave these no event
    sink_failures: Mapping[str, int] = field(default_factory=dict)  # event id -> sinks refusing
    publish_s: float = 0.0  # handing the batch's events to the sinks

    @property
    def delivered(self) -> bool:
        return (
            self.classify_error is None
            and not self.missing_utterance_ids
            and not self.sink_failures
        )


class Delivery:
    """Classify -> publish to every sink -> append to the context store -> count.

    A failing sink is counted and logged and the other sinks still get the event. Events are
    remembered in ``context`` once they went to the sinks, whether or not every sink took them:
    the conversation happened either way, and the store keeps one turn per utterance id, so a
    redelivered batch does not add a second copy.
    """

    def __init__(
        self,
        classifier: Classifier,
        sinks: Sequence[Sink],
        context: ContextStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.classifier = classifier
        self.sinks = list(sinks)
        self.context = context
        self.metrics = metrics or Metrics()
        self.events = 0  # events every sink took
        self.sink_failures = 0  # (event, sink) pairs that failed
        # sink name -> its last error, while its latest publish failed (for /healthz)
        self.sink_errors: dict[str, str] = {}

    async def deliver(self, utts: Sequence[Utterance]) -> DeliveryResult:
        """Run one batch through the stage; the classifier's own failure comes back in the result."""
        t0 = time.perf_counter()
        try:
            events = await self.classifier.classify(utts)
        except Exception as e:  # noqa: BLE001 - third-party model code: the caller decides
            return DeliveryResult(classify_error=e)
        self.metrics.observe_stage("classify", time.perf_counter() - t0)
        have = {ev.utterance_id for ev in events}
        missing = tuple(u.utterance_id for u in utts if u.utterance_id not in have)
        if missing:
            return DeliveryResult(tuple(events), missing_utterance_ids=missing)
        t1 = time.perf_counter()
        failures = await self.publish(events)
        publish_s = time.perf_counter() - t1
        if not failures:
            self.metrics.observe_stage("publish", publish_s)
            now = time.time()
            for u in utts:
                self.metrics.observe_stage("end_to_end", now - u.end_wall)
        if self.context is not None:
            await self.context.append(events)
        if not failures:
            self.metrics.events.inc(len(events))
            self.events += len(events)
        return DeliveryResult(tuple(events), sink_failures=failures, publish_s=publish_s)

    async def publish(self, events: Sequence[EmotionEvent]) -> dict[str, int]:
        """Hand each event to every sink, in order; return the failures per event id."""
        failures: dict[str, int] = {}
        for ev in events:
            for sink in self.sinks:
                name = str(getattr(sink, "name", sink))
                try:
                    await sink.publish(ev)
                except Exception as e:  # noqa: BLE001 - one sink must not stop the others
                    failures[ev.event_id] = failures.get(ev.event_id, 0) + 1
                    self.sink_failures += 1
                    self.sink_errors[name] = f"publish failing: {e}"
                    log.error("sink %s failed on event %s: %s", name, ev.event_id, e)
                else:
                    self.sink_errors.pop(name, None)
        return failures


__all__ = ["Classifier", "Delivery", "DeliveryResult", "context_store_for"]
