"""Whisper on several utterances at once (issue 16, item 2).

At N parallel sessions the CPU goes to one Whisper call per utterance. Utterances that wait
together are encoded and decoded as one CTranslate2 batch, each with **its own encoder window**:
windows are whole seconds (:class:`emomon.model.audio.WhisperWindow`), so the batch is split
into groups of equal window length (every utterance up to 2 s of speech has the 10 s window)
and each group is one ``encode`` and one ``generate`` call. The frames and the text of an
utterance are the same as when it is transcribed alone (``tests/unit/test_asr_batch.py``).

:class:`AsrBatcher` collects the requests: when a transcription slot is free it takes what is
waiting, waits at most ``batch_wait_ms`` for more (like the fusion worker's ``max_wait_ms``)
and hands up to ``batch_max`` utterances to one call. An idle pipeline therefore pays at most
a few milliseconds; a busy one gets larger batches exactly when slots are scarce.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self.queue: asyncio.Queue[Request] = asyncio.Queue()
        self.slots = asyncio.Semaphore(slots)
        self.sizes: dict[int, int] = {}  # batch size -> batches run
        self._task = self.loop.create_task(self._collect(), name="asr-batcher")
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, audio: np.ndarray, meta: Any) -> Any:
        """``run_batch``'s result for ``audio``; ``meta`` travels with it (stream, ticket)."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.queue.put_nowait((audio, meta, fut))
        return await fut

    async def _collect(self) -> None:
        while True:
            await self.slots.acquire()
            batch = [await self.queue.get()]
            deadline = self.loop.time() + self.wait_s
            while len(batch) < self.batch_max:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - self.loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            batch = [r for r in batch if not r[2].done()]  # cancelled while waiting
            if not batch:
                self.slots.release()
                continue
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
            self.slots.release()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for t in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await t
