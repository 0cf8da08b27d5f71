"""MQTT topic names: the layout the sink publishes, and making user text safe as a topic level.

Layout (``{prefix}`` = ``mqtt.topic_prefix``, default ``emomon``; see docs/MQTT.md):

- ``{prefix}/{session}/{speaker}/emotion`` - every event, not retained;
- ``{prefix}/{session}/{speaker}/state``   - the speaker's latest event, retained;
- ``{prefix}/{session}/events``            - every event of every speaker of the session;
- ``{prefix}/status``                      - retained ``online`` / ``offline`` (last will).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from emomon.services.publish import homeassistant
from emomon.services.publish.base import SinkError

log = logging.getLogger(__name__)

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"

# '+' and '#' are wildcards, '/' separates levels, NUL is forbidden by the MQTT spec, other
# control characters are discouraged by it (and break shells and dashboards).
_UNSAFE_IN_SEGMENT = re.compile(r"[+#/\x00-\x1f\x7f]")
MAX_SEGMENT_BYTES = 128  # a speaker name is not a place for a novel; MQTT allows 64 KiB topics


def sanitize_segment(value: str) -> str:
    """Make ``value`` (a speaker name or session id) safe as exactly one MQTT topic level.

    Why: speaker names come from users (RTP SSRC names, clustering labels) and session ids from
    file names; a ``/`` would add a topic level, ``+``/``#`` are wildcards a publisher may not
    use, and an empty level makes ``a//b`` topics that most dashboards mishandle. Unsafe
    characters become ``_``; an empty value becomes ``_``; the result is cut to
    :data:`MAX_SEGMENT_BYTES` of UTF-8. Distinct names may collide after this (``a/b`` and
    ``a+b``); the payload always carries the original name.
    """
    safe = _UNSAFE_IN_SEGMENT.sub("_", value)
    # Lone surrogates (from undecodable file names) cannot be encoded as UTF-8, which MQTT requires.
    raw = safe.encode("utf-8", "replace")[:MAX_SEGMENT_BYTES]
    safe = raw.decode("utf-8", "ignore")  # "ignore" drops a multi-byte char cut in half
    return safe or "_"


def validate_prefix(prefix: str) -> str:
    """Check a topic prefix (may span levels, ``home/emomon``); raise SinkError if unusable."""
    levels = prefix.split("/")
    if not prefix or any(not level for level in levels):
        raise SinkError(f"mqtt.topic_prefix {prefix!r} must be non-empty and have no empty levels")
    if any(_UNSAFE_IN_SEGMENT.search(level) for level in levels):
        raise SinkError(
            f"mqtt.topic_prefix {prefix!r} may not contain '+', '#' or control characters"
        )
    if prefix.startswith("$"):
        raise SinkError(
            f"mqtt.topic_prefix {prefix!r} may not start with '$' (reserved for brokers)"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the sink uses, in one place, so docs, tests and code cannot drift apart."""

    prefix: str = "emomon"
    ha_prefix: str = "homeassistant"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def emotion(self, session: str, speaker: str) -> str:
        return f"{self.prefix}/{sanitize_segment(session)}/{sanitize_segment(speaker)}/emotion"

    def state(self, session: str, speaker: str) -> str:
        return f"{self.prefix}/{sanitize_segment(session)}/{sanitize_segment(speaker)}/state"

    def events(self, session: str) -> str:
        return f"{self.prefix}/{sanitize_segment(session)}/events"

    def ha_config(self, session: str, speaker: str) -> str:
        return f"{self.ha_prefix}/sensor/{homeassistant.object_id(session, speaker)}/config"

    @property
    def ha_status(self) -> str:
        return f"{self.ha_prefix}/status"

    def routes(self, session: str, speaker: str) -> tuple[tuple[str, bool], ...]:
        """(topic, retain) of every message one event becomes; the state topic last, so a retained
        state never runs ahead of the stream a subscriber sees."""
        return (
            (self.emotion(session, speaker), False),
            (self.events(session), False),
            (self.state(session, speaker), True),
        )


def check_sessions(topics: Topics, sessions: Sequence[str]) -> None:
    """Refuse two sessions whose ids sanitise to the same topic level (their events would mix)."""
    seen: dict[str, str] = {}
    for session in sessions:
        seg = sanitize_segment(session)
        if seg in seen and seen[seg] != session:
            raise SinkError(
                f"sessions {seen[seg]!r} and {session!r} map to the same MQTT topic level {seg!r}; "
                "rename one (--set source.session=...)"
            )
        seen[seg] = session
        log.info("MQTT: session %r publishes to %s/%s/#", session, topics.prefix, seg)
