"""Per-session conversation context that outlives any single fusion worker.

The context model (CFN-ESA-style emotion shift, see MODEL.md section 2) needs the last few
utterances of a session and their labels. In distributed mode consecutive utterances of one
session are spread over several workers, and a worker may die at any time, so the context cannot
live in a worker's memory: it lives in Redis, next to the stream, one sorted set per session
(see docs/DISTRIBUTED.md, "Per-session context", for the reasoning):

* key ``{prefix}{session}``, member = canonical JSON of (utterance id, speaker, label, text,
  start/end, and the model's turn memory — fp16 features + logits, base64, ~1.7 kB), score = the utterance's ``end_s`` (stream time). Ordering by stream time, not by
  arrival, keeps the context right when two workers finish a session's utterances out of order.
* Writing the same event twice (a redelivery after a crash) writes the same member: idempotent.
* ``ZREMRANGEBYRANK`` keeps the last ``max_entries``; ``EXPIRE context_ttl_s`` forgets ended
  sessions, so memory stays bounded without a cleanup job.

The embedded mode uses :class:`InMemoryContextStore`, same interface, same bounds.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from redis.asyncio import Redis

from emomon.services.events import EmotionEvent
from emomon.streamer.utterance_schema import MAX_ID_CHARS, MAX_TEXT_CHARS, one_line

log = logging.getLogger("emomon.context")

DEFAULT_MAX_ENTRIES = 16
DEFAULT_KEY_PREFIX = "emomon:ctx:"
MAX_MEMBER_BYTES = 256 * 1024
MAX_MEMORY_B64_CHARS = 64 * 1024  # the turn memory is ~1.7 kB of fp16, base64 ~2.3 kB


class ContextDecodeError(ValueError):
    """A context-store member read back from Redis is not a valid :class:`ContextEntry`."""


_Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
_Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Member(BaseModel):
    """The stored member's JSON, checked the way stream entries are (issue 18, item 1)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    u: _Id
    s: _Id
    l: Annotated[str, StringConstraints(min_length=1, max_length=64)]  # noqa: E741
    a: _Seconds
    b: _Seconds
    t: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | None = None
    m: Annotated[str, StringConstraints(max_length=MAX_MEMORY_B64_CHARS)] | None = None


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One past utterance as the context model sees it. ``text`` is None under ``--no-text``."""

    utterance_id: str
    speaker: str
    label: str
    start_s: float
    end_s: float
    text: str | None = None
    memory: bytes | None = None  # the model's turn memory (fp16), what its context head reads

    @classmethod
    def from_event(cls, ev: EmotionEvent) -> ContextEntry:
        return cls(
            ev.utterance_id,
            ev.speaker,
            ev.label,
            round(ev.start_s, 3),
            round(ev.end_s, 3),
            ev.text,
            ev.memory,
        )

    def to_json(self) -> str:
        # Canonical (sorted keys, fixed rounding) so a redelivered event maps to the same member.
        return json.dumps(
            {
                "u": self.utterance_id,
                "s": self.speaker,
                "l": self.label,
                "a": self.start_s,
                "b": self.end_s,
                "t": self.text,
                "m": base64.b64encode(self.memory).decode("ascii") if self.memory else None,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ContextEntry:
        """Parse a stored member; :class:`ContextDecodeError` with a one-line reason if invalid."""
        if len(raw) > MAX_MEMBER_BYTES:
            raise ContextDecodeError(f"member of {len(raw)} bytes is over {MAX_MEMBER_BYTES}")
        try:
            d = _Member.model_validate_json(raw)
        except ValidationError as e:
            raise ContextDecodeError(f"invalid context member: {one_line(e)}") from e
        if d.b < d.a:
            raise ContextDecodeError(f"invalid context member: end {d.b} is before start {d.a}")
        try:
            memory = base64.b64decode(d.m, validate=True) if d.m else None
        except (binascii.Error, ValueError) as e:
            raise ContextDecodeError(f"invalid context member: m is not base64 ({e})") from e
        return cls(d.u, d.s, d.l, d.a, d.b, d.t, memory)


class ContextStore(Protocol):
    """Where the worker appends each session's events and the context model reads them back."""

    async def append(self, events: Sequence[EmotionEvent]) -> None: ...

    async def recent(
        self, session: str, speaker: str | None = None, n: int | None = None
    ) -> list[ContextEntry]: ...


class RedisContextStore:
    """Session context in Redis sorted sets; one pipelined round trip per worker batch."""

    def __init__(
        self,
        client: Redis,
        ttl_s: int,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        key_prefix: str = DEFAULT_KEY_PREFIX,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._r = client
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.key_prefix = key_prefix

    def key(self, session: str) -> str:
        return self.key_prefix + session

    async def append(self, events: Sequence[EmotionEvent]) -> None:
        if not events:
            return
        by_session: dict[str, dict[str, float]] = {}
        for ev in events:
            entry = ContextEntry.from_event(ev)
            by_session.setdefault(ev.session, {})[entry.to_json()] = entry.end_s
        async with self._r.pipeline(transaction=False) as pipe:
            for session, members in by_session.items():
                k = self.key(session)
                pipe.zadd(k, members)
                pipe.zremrangebyrank(k, 0, -(self.max_entries + 1))
                pipe.expire(k, self.ttl_s)
            await pipe.execute()

    async def recent(
        self, session: str, speaker: str | None = None, n: int | None = None
    ) -> list[ContextEntry]:
        """Oldest first; the last ``n`` (default all kept) of the session, or of one speaker in it."""
        raw: list[bytes] = cast(list[bytes], await self._r.zrange(self.key(session), 0, -1))
        entries = []
        for m in raw:
            try:
                entries.append(ContextEntry.from_json(m))
            except ContextDecodeError as e:
                # One bad member (written by another version, or by hand) must not stop the
                # session: it is left out of the context, and said once per read.
                log.warning("skipping a context member of session %r: %s", session[:64], e)
        if speaker is not None:
            entries = [e for e in entries if e.speaker == speaker]
        return entries[-n:] if n else entries


class InMemoryContextStore:
    """The embedded mode's store: same semantics, bounded by ``max_sessions`` (LRU) and TTL."""

    def __init__(
        self, ttl_s: int, max_entries: int = DEFAULT_MAX_ENTRIES, max_sessions: int = 10_000
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_sessions = max_sessions
        self._data: OrderedDict[str, tuple[float, dict[str, ContextEntry]]] = OrderedDict()

    async def append(self, events: Sequence[EmotionEvent]) -> None:
        now = time.monotonic()
        for ev in events:
            _, entries = self._data.pop(ev.session, (now, {}))
            entries[ev.utterance_id] = ContextEntry.from_event(ev)
            if len(entries) > self.max_entries:
                keep = sorted(entries.values(), key=lambda e: e.end_s)[-self.max_entries :]
                entries = {e.utterance_id: e for e in keep}
            self._data[ev.session] = (now, entries)
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)

    async def recent(
        self, session: str, speaker: str | None = None, n: int | None = None
    ) -> list[ContextEntry]:
        item = self._data.get(session)
        if item is None or time.monotonic() - item[0] > self.ttl_s:
            self._data.pop(session, None)
            return []
        entries = sorted(item[1].values(), key=lambda e: e.end_s)
        if speaker is not None:
            entries = [e for e in entries if e.speaker == speaker]
        return entries[-n:] if n else entries


__all__ = [
    "ContextDecodeError",
    "ContextEntry",
    "ContextStore",
    "InMemoryContextStore",
    "RedisContextStore",
]
