"""Redis Streams transport for the distributed mode: streamers ``XADD``, fusion workers ``XREADGROUP``.

* :mod:`.producer` (``emomon stream``): :class:`RedisProducer`, a bounded local buffer in front
  of ``XADD`` that never makes audio capture wait on the network.
* :mod:`.reader` and :mod:`.worker` (``emomon worker``): :class:`RedisStreamWorker`, one consumer
  of a consumer group, acking entries only once their events were delivered, dead-lettering
  what cannot be processed.
* :mod:`emomon.services.retry` (shared with MQTT): the back-off policy both halves ride Redis
  outages on.
* :mod:`.client`: the connection, the shared errors, stream replies as :class:`Entry`.

See docs/DISTRIBUTED.md for the failure model and the figures.
"""

from emomon.services.delivery import Classifier
from emomon.services.queue.redis.client import (
    TRANSIENT_ERRORS,
    Entry,
    RedisQueueError,
    connect,
    default_consumer_name,
)
from emomon.services.queue.redis.producer import RedisProducer
from emomon.services.queue.redis.worker import RedisStreamWorker
from emomon.services.retry import RetryPolicy, default_backoff

__all__ = [
    "TRANSIENT_ERRORS",
    "Classifier",
    "Entry",
    "RedisProducer",
    "RedisQueueError",
    "RedisStreamWorker",
    "RetryPolicy",
    "connect",
    "default_backoff",
    "default_consumer_name",
]
