"""Former home of the Redis Streams transport, now the package :mod:`emomon.services.queue.redis`.

Kept so that existing imports keep working; new code imports from the package.
"""

from emomon.services.queue import redis as _package
from emomon.services.queue.redis import *  # noqa: F403 - the package's public names, unchanged

__all__ = _package.__all__
