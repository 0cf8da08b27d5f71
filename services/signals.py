"""Stop handling shared by every long-running command (``run``, ``replay``, ``stream``, ``worker``).

The first SIGINT/SIGTERM sets a ``stop`` event: sources stop, the work in hand is finished and
acknowledged, sinks are closed, the process exits 0. A second signal (or the drain timeout,
when one is given) cancels the main task: what is still in flight is abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("emomon.lifecycle")


def install_stop_handlers(
    stop: asyncio.Event,
    *,
    drain_timeout_s: float | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Route SIGINT/SIGTERM of the running loop to ``stop`` (first) and a forced stop (second).

    ``announce(signal_name)`` tells the user that a graceful stop began (default: a log line).
    Outside the main thread (tests, embedding) signals cannot be handled and nothing happens.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def force() -> None:
        if main is not None and not main.done():
            main.cancel()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: stopping now", name)
            force()
            return
        if announce is not None:
            announce(name)
        else:
            log.info("%s: finishing the work in hand, then stopping", name)
        stop.set()
        if drain_timeout_s is not None:
            loop.call_later(drain_timeout_s, force)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
