"""Queue transports between the streamer half and the fusion worker."""

from emomon.services.queue.memory import InProcessQueue

__all__ = ["InProcessQueue"]
