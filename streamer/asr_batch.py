"""Whisper on several utterances at once (issue 16, item 2).

At N parallel sessions the CPU goes to one Whisper call per utterance. Utterances that wait
together are encoded and decoded as one CTranslate2 batch, each with **its own encoder window**:
windows are whole seconds (:class:`emomon.model.audio.WhisperWindow`), so the batch is split
into groups of equal window length (every utterance up to 2 s of speech has the 10 s window)
and each group is one ``encode`` and one ``generate`` call. The frames and the text of an
utterance are the same as when it is transcribed alone (``tests/unit/test_asr_batch.py``).

:class:`AsrBatcher` collects the requests. Waiting requests are first spread over the free
transcription slots (``asr.workers`` calls run in parallel, one core each); the last free slot
waits at most ``batch_wait_ms`` for more (like the fusion worker's ``max_wait_ms``) and takes
up to ``batch_max``. So an idle pipeline never waits and never batches, and a busy one batches
exactly what the slots cannot run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emomon.model.audio import WhisperWindow, content_frames_of, window_features


@dataclass(frozen=True, slots=True)
class Encoded:
    """One utterance's encoder pass: its log-mel features, its group and row, its frames."""

    features: np.ndarray
    group: int
    row: int
    frames: np.ndarray  # (T, D) float32 content frames


def encode_batch(
    whisper_model: Any, audios: Sequence[np.ndarray], window: WhisperWindow
) -> tuple[list[Encoded], list[Any]]:
    """Encode ``audios`` in groups of equal window length: (per audio, group encoder outputs)."""
    prepared = [window_features(whisper_model, a, window) for a in audios]
    lengths: dict[int, list[int]] = {}
    for i, (_, seg) in enumerate(prepared):
        lengths.setdefault(seg.shape[-1], []).append(i)
    out: list[Encoded | None] = [None] * len(audios)
    groups = []
    for g, idx in enumerate(lengths.values()):
        batch = np.stack([prepared[i][1] for i in idx])  # (B, 80, length)
        encoded = whisper_model.encode(batch)  # StorageView (B, length / 2, D)
        groups.append(encoded)
        arr = np.array(encoded)
        for row, i in enumerate(idx):
            out[i] = Encoded(prepared[i][0], g, row, content_frames_of(arr[row], prepared[i][0]))
    return [e for e in out if e is not None], groups


def select_rows(encoder_output: Any, rows: Sequence[int]) -> Any:
    """A StorageView of some rows of a group's encoder output (all rows: the same view)."""
    import ctranslate2

    if list(rows) == list(range(encoder_output.shape[0])):
        return encoder_output
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.array(encoder_output)[rows]))


Request = tuple[np.ndarray, Any, "asyncio.Future[Any]"]


class AsrBatcher:
    """Collects transcription requests into batches for ``run_batch`` (a blocking call).

    ``slots`` batches run at once (``asr.workers``); one batcher per event loop.
    """

    def __init__(
        self,
        run_batch: Callable[[list[np.ndarray], list[Any]], list[Any]],
        pool: Any,
        slots: int,
        batch_max: int,
        batch_wait_ms: int,
    ):
        self.run_batch = run_batch
        self.pool = pool
        self.batch_max = batch_max
        self.wait_s = batch_wait_ms / 1000
        self.loop = asyncio.get_running_loop()
        self.waiting: deque[Request] = deque()
        self._arrived = asyncio.Event()
        self.slots = asyncio.Semaphore(slots)
        self.total_slots = slots
        self.busy = 0  # slots running a batch
        self.sizes: dict[int, int] = {}  # batch size -> batches run
        self._task = self.loop.create_task(self._collect(), name="asr-batcher")
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, audio: np.ndarray, meta: Any) -> Any:
        """``run_batch``'s result for ``audio``; ``meta`` travels with it (stream, ticket)."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.waiting.append((audio, meta, fut))
        self._arrived.set()
        return await fut

    async def _arrival(self, timeout: float | None = None) -> bool:
        """Wait for a new request (False: none came within ``timeout``)."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _collect(self) -> None:
        """Hand waiting requests to free slots. With one CTranslate2 thread per call, two calls
        in parallel use two cores and a batch uses one: so requests are spread over the free
        slots first, and only the last free slot waits (``wait_s``) to batch what is left."""
        while True:
            await self.slots.acquire()
            while not self.waiting:
                await self._arrival()
            deadline = self.loop.time() + self.wait_s
            while self.total_slots - self.busy - 1 == 0 and len(self.waiting) < self.batch_max:
                left = deadline - self.loop.time()
                if left <= 0 or not await self._arrival(left):
                    break
            free = self.total_slots - self.busy  # this slot included
            share = min(self.batch_max, math.ceil(len(self.waiting) / free))
            batch = [self.waiting.popleft() for _ in range(share)]
            batch = [r for r in batch if not r[2].done()]  # cancelled while waiting
            if not batch:
                self.slots.release()
                continue
            self.busy += 1
            t = self.loop.create_task(self._run(batch))
            self._running.add(t)
            t.add_done_callback(self._running.discard)

    async def _run(self, batch: list[Request]) -> None:
        try:
            self.sizes[len(batch)] = self.sizes.get(len(batch), 0) + 1
            audios = [r[0] for r in batch]
            metas = [r[1] for r in batch]
            try:
                results = await self.loop.run_in_executor(self.pool, self.run_batch, audios, metas)
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                return
            for (_, _, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
        finally:
            self.busy -= 1
            self.slots.release()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for t in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await t
