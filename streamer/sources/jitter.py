"""Per-stream RTP jitter buffer: puts packets back in sequence order and accounts for the rest.

emomon does not play audio out to a loudspeaker, it feeds a VAD and an ASR that go by the RTP
timestamps. So a packet that arrives *in order* is released at once (no playout delay), and
only a *gap* in the sequence costs time: the buffer waits up to ``window_s`` after a later
packet arrived for the missing one to turn up (reordering), then declares it lost and moves
on. The added latency is therefore zero on a clean network and at most the window on a lossy
one. At the start of a stream the first release waits one window, so that packets reordered
before the first one are not misjudged as late.

Sequence numbers are 16 bits and wrap; they are extended to a monotone counter as in
RFC 3550 appendix A.1, including the "restart after a big jump" rule (a sender that restarts
its sequence is followed after two consecutive packets rather than dropped forever).

Counters (all exact, with RFC 3550 meanings where one exists):
``lost``       sequence numbers skipped when a gap was given up (never arrived in time);
``late``       packets that arrived after their gap had been given up;
``duplicate``  a sequence number already buffered or already released;
``reordered``  packets that arrived after a higher sequence number but still in time;
``overflow``   packets dropped because the buffer was full (its bound: ``max_packets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # RFC 3550 A.1: a jump further ahead is a possible sender restart
MAX_MISORDER = 100  # ... and further behind than this, too
_RECENT = 1024  # how many released sequence numbers are remembered for duplicate detection


@dataclass(slots=True)
class JitterStats:
    received: int = 0
    released: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    reordered: int = 0
    overflow: int = 0
    restarts: int = 0


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    arrival: float


class JitterBuffer(Generic[T]):
    """Reorders items by RTP sequence number within a time window.

    ``push(seq, item, now)`` from the receive path; ``pop_ready(now)`` from the consumer returns
    ``(extended_seq, item)`` pairs in order. Times are seconds on any monotonic clock.
    """

    def __init__(self, window_s: float, max_packets: int = 512) -> None:
        if window_s < 0:
            raise ValueError(f"jitter window must be >= 0 s, got {window_s}")
        if max_packets < 1:
            raise ValueError(f"max_packets must be >= 1, got {max_packets}")
        self.window_s = window_s
        self.max_packets = max_packets
        self.stats = JitterStats()
        self._buf: dict[int, _Entry[T]] = {}
        self._max_ext: int | None = None  # highest extended sequence number seen
        self._next: int | None = None  # next extended sequence number to release
        self._first_arrival = 0.0
        self._recent = [-1] * _RECENT  # released ext seq at index ext % _RECENT
        self._probation: int | None = None  # 16-bit seq that would confirm a sender restart
        self._carry: list[tuple[int, T]] = []  # released-to-be packets from before a restart

    def __len__(self) -> int:
        return len(self._buf) + len(self._carry)

    def _extend(self, seq: int) -> int:
        assert self._max_ext is not None
        delta = (seq - self._max_ext) % SEQ_MOD
        if delta >= SEQ_MOD // 2:
            delta -= SEQ_MOD
        return self._max_ext + delta

    def push(self, seq: int, item: T, now: float) -> bool:
        """Offer one packet; returns ``True`` when it was buffered (else it was counted and dropped)."""
        st = self.stats
        st.received += 1
        seq &= 0xFFFF
        if self._max_ext is None:
            self._max_ext = seq
            self._first_arrival = now
        ext = self._extend(seq)
        if ext - self._max_ext > MAX_DROPOUT or self._max_ext - ext > max(
            MAX_MISORDER, self.max_packets
        ):
            if self._probation != seq:
                # A wild jump: wait for the next packet to confirm a restart before following it.
                self._probation = (seq + 1) & 0xFFFF
                st.late += 1
                return False
            self._restart(seq, now)
            ext = self._max_ext
        self._probation = None
        if self._next is not None and ext < self._next:
            if self._recent[ext % _RECENT] == ext:
                st.duplicate += 1
            else:
                st.late += 1
            return False
        if ext in self._buf:
            st.duplicate += 1
            return False
        if len(self._buf) >= self.max_packets:
            st.overflow += 1
            return False
        if ext < self._max_ext:
            st.reordered += 1
        else:
            self._max_ext = ext
        self._buf[ext] = _Entry(item, now)
        return True

    def _restart(self, seq: int, now: float) -> None:
        """The sender jumped its sequence (RFC 3550 A.1 'restart'): what is buffered is handed to
        :meth:`pop_ready` first, in its old order, and counting starts afresh at ``seq``."""
        self.stats.restarts += 1
        self._carry.extend((ext, e.item) for ext, e in sorted(self._buf.items()))
        self._buf = {}
        self._recent = [-1] * _RECENT
        self._max_ext = seq
        self._next = seq
        self._first_arrival = now

    def next_deadline(self) -> float | None:
        """When :meth:`pop_ready` will next have something to do because of time alone, or None."""
        if self._carry:
            return 0.0
        if not self._buf:
            return None
        if self._next is None:
            return self._first_arrival + self.window_s
        if self._next in self._buf:
            return 0.0
        return min(e.arrival for e in self._buf.values()) + self.window_s

    def pop_ready(self, now: float, *, flush: bool = False) -> list[tuple[int, T]]:
        """Release packets in sequence order: all in-order ones, and past gaps that waited the window.

        ``flush=True`` (stream ending) gives up every gap at once and empties the buffer.
        """
        out: list[tuple[int, T]] = self._carry
        self._carry = []
        if not self._buf:
            self.stats.released += len(out)
            return out
        if self._next is None:
            if not flush and now < self._first_arrival + self.window_s:
                return out
            self._next = min(self._buf)
        while self._buf:
            entry = self._buf.pop(self._next, None)
            if entry is None:
                oldest = min(e.arrival for e in self._buf.values())
                if not flush and now < oldest + self.window_s:
                    break
                first = min(self._buf)
                self.stats.lost += first - self._next
                self._next = first
                continue
            out.append((self._next, entry.item))
            self._recent[self._next % _RECENT] = self._next
            self._next += 1
        self.stats.released += len(out)
        return out
