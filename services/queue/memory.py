"""The embedded default queue: a bounded in-process asyncio queue with dynamic batching.

Overflow policy: ``put`` waits when the queue is full (back-pressure on the transcriber); live
sources keep their own bounded buffers, which drop oldest audio and count it. Nothing
accepted into this queue is dropped.
"""

from __future__ import annotations

import asyncio
import time

from emomon.streamer.utterance import Utterance


class InProcessQueue:
    def __init__(self, maxsize: int = 256):
        self._q: asyncio.Queue[tuple[float, Utterance] | None] = asyncio.Queue(maxsize)
        self._closed = False

    def qsize(self) -> int:
        return self._q.qsize()

    async def put(self, utt: Utterance) -> None:
        if self._closed:
            raise RuntimeError("queue is closed")
        await self._q.put((time.perf_counter(), utt))

    async def close(self) -> None:
        """No more puts; ``get_batch`` returns ``None`` once everything queued was taken."""
        if not self._closed:
            self._closed = True
            await self._q.put(None)

    async def get_batch(self, max_batch: int, max_wait_ms: int) -> list[Utterance] | None:
        """Wait for one utterance, then take what arrives within ``max_wait_ms`` (up to ``max_batch``)."""
        first = await self._q.get()
        if first is None:
            return None
        items = [first]
        deadline = time.perf_counter() + max_wait_ms / 1000
        while len(items) < max_batch:
            try:
                nxt = self._q.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._q.get(), left)
                except TimeoutError:
                    break
            if nxt is None:  # keep the end marker for the next call
                self._q.put_nowait(None)
                break
            items.append(nxt)
        now = time.perf_counter()
        out = []
        for t_in, u in items:
            timings = dict(u.timings)
            timings["queue"] = now - t_in
            out.append(u.with_updates(timings=timings))
        return out
