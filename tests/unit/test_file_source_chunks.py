"""The file source's chunk size: 100 ms by default (paced or not), settable, validated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from emomon.streamer.sources.base import SourceError
from emomon.streamer.sources.file import FileSource

CALL = Path(__file__).resolve().parents[1] / "data" / "phone-call-2spk.wav"


async def _first(src: FileSource, n: int) -> list[int]:
    sizes = []
    async for chunk in src.chunks():
        sizes.append(chunk.pcm.shape[0])
        if len(sizes) == n:
            break
    await src.close()
    return sizes


@pytest.mark.parametrize(("realtime", "samples"), [(True, 1600), (False, 1600)])
def test_default_chunk_size(realtime: bool, samples: int) -> None:
    assert asyncio.run(_first(FileSource(CALL, realtime=realtime), 3)) == [samples] * 3


def test_explicit_chunk_size_and_a_bad_one() -> None:
    assert asyncio.run(_first(FileSource(CALL, chunk_ms=50), 2)) == [800, 800]
    with pytest.raises(SourceError, match="chunk_ms"):
        FileSource(CALL, chunk_ms=0)
