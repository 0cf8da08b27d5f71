import asyncio

import numpy as np

from emomon.services.queue.memory import InProcessQueue
from emomon.streamer.utterance import Utterance


def _u(i):
    return Utterance("s", "a", "0", f"s:0:{i}", 0.0, 1.0, 0.0, np.zeros(10, np.int16))


def test_batches_up_to_max_and_drains_after_close():
    async def go():
        q = InProcessQueue(100)
        for i in range(5):
            await q.put(_u(i))
        await q.close()
        b1 = await q.get_batch(3, 10)
        b2 = await q.get_batch(3, 10)
        end = await q.get_batch(3, 10)
        return b1, b2, end

    b1, b2, end = asyncio.run(go())
    assert [u.utterance_id for u in b1 + b2] == [f"s:0:{i}" for i in range(5)]
    assert len(b1) == 3 and end is None
    assert all("queue" in u.timings for u in b1 + b2)


def test_waits_max_wait_for_more():
    async def go():
        q = InProcessQueue(10)
        await q.put(_u(0))

        async def later():
            await asyncio.sleep(0.02)
            await q.put(_u(1))

        t = asyncio.create_task(later())
        b = await q.get_batch(8, 200)
        await t
        return b

    assert len(asyncio.run(go())) == 2


def test_put_applies_backpressure_when_full():
    async def go():
        q = InProcessQueue(1)
        await q.put(_u(0))
        blocked = asyncio.create_task(q.put(_u(1)))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        await q.get_batch(1, 0)
        await asyncio.wait_for(blocked, 1)

    asyncio.run(go())
