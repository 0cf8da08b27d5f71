"""The delivery stage shared by the embedded pipeline and the Redis worker (issue #19), with fakes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from emomon.services.context import InMemoryContextStore
from emomon.services.delivery import Delivery, context_store_for
from emomon.services.events import EmotionEvent
from emomon.services.retry import RetryPolicy
from emomon.services.settings import WorkerSettings
from emomon.streamer.utterance import Utterance
from tests.helpers.factories import event
from tests.helpers.factories import utterance as _utt


class _Labeller:
    """Gives every utterance a fixed event; ``skip`` leaves one out, ``fail`` raises."""

    def __init__(self, skip: str | None = None, fail: bool = False) -> None:
        self.skip, self.fail = skip, fail

    async def classify(self, utts: Sequence[Utterance]) -> list[EmotionEvent]:
        if self.fail:
            raise RuntimeError("model broke")
        return [
            event(u.utterance_id, u.end_s, speaker=u.speaker, session=u.session)
            for u in utts
            if u.utterance_id != self.skip
        ]


class _Sink:
    def __init__(self, name: str, refuse: str | None = None) -> None:
        self.name, self.refuse = name, refuse
        self.got: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: EmotionEvent) -> None:
        if event.utterance_id == self.refuse:
            raise OSError("disk full")
        self.got.append(event.utterance_id)


def test_every_event_reaches_every_sink_in_order_and_is_remembered() -> None:
    async def main() -> None:
        store = InMemoryContextStore(ttl_s=60)
        sinks = [_Sink("a"), _Sink("b")]
        d = Delivery(_Labeller(), sinks, store)
        r = await d.deliver([_utt(0), _utt(1)])
        assert r.delivered and [e.utterance_id for e in r.events] == ["u0", "u1"]
        assert sinks[0].got == sinks[1].got == ["u0", "u1"]
        assert [e.utterance_id for e in await store.recent("s")] == ["u0", "u1"]
        assert d.events == 2 and d.metrics.events._value.get() == 2

    asyncio.run(main())


def test_a_failing_sink_is_counted_and_the_others_go_on() -> None:
    async def main() -> None:
        store = InMemoryContextStore(ttl_s=60)
        sinks = [_Sink("bad", refuse="u0"), _Sink("good")]
        d = Delivery(_Labeller(), sinks, store)
        r = await d.deliver([_utt(0), _utt(1)])
        assert not r.delivered and dict(r.sink_failures) == {r.events[0].event_id: 1}
        assert sinks[0].got == ["u1"] and sinks[1].got == ["u0", "u1"]
        assert d.sink_failures == 1 and d.events == 0  # not counted as delivered
        assert len(await store.recent("s")) == 2  # the conversation happened all the same

    asyncio.run(main())


def test_classifier_failures_and_gaps_come_back_in_the_result_and_publish_nothing() -> None:
    async def main() -> None:
        sink = _Sink("a")
        broken = await Delivery(_Labeller(fail=True), [sink]).deliver([_utt(0)])
        assert isinstance(broken.classify_error, RuntimeError) and not broken.delivered
        gap = await Delivery(_Labeller(skip="u1"), [sink]).deliver([_utt(0), _utt(1)])
        assert gap.missing_utterance_ids == ("u1",) and not gap.delivered
        assert sink.got == []

    asyncio.run(main())


def test_context_is_used_only_when_asked_for_and_the_model_has_a_context_head() -> None:
    class WithHead:
        context = object()

    class Without:
        context = None

    store = InMemoryContextStore(ttl_s=60)
    assert context_store_for(WorkerSettings(), WithHead(), store) is store
    assert context_store_for(WorkerSettings(context=False), WithHead(), store) is None
    assert context_store_for(WorkerSettings(), Without(), store) is None
    assert context_store_for(WorkerSettings(), object(), store) is None
    assert context_store_for(WorkerSettings(), WithHead(), None) is None


def test_retry_policy_counts_backs_off_and_logs_the_recovery(caplog) -> None:  # type: ignore[no-untyped-def]
    class Doubling:
        def compute(self, failures: int) -> float:
            return 0.001 * 2**failures

    class Counter:
        n = 0.0

        def inc(self, amount: float = 1) -> None:
            self.n += amount

    errors = Counter()
    policy = RetryPolicy(logging.getLogger("t"), Doubling(), errors)

    async def main() -> None:
        with caplog.at_level(logging.INFO, logger="t"):
            await policy.wait_after_failure("Redis unreachable (test)")
            await policy.wait_after_failure("Redis unreachable (test)")
            assert policy.failures == 2 and errors.n == 2
            policy.succeeded()
        assert policy.failures == 0
        messages = [r.getMessage() for r in caplog.records]
        assert messages[0] == "Redis unreachable (test); retry 1 in 0.00s"
        assert messages[-1] == "Redis reachable again after 2 failed attempt(s)"

    asyncio.run(main())
