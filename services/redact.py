"""Masking passwords before anything is printed (issue #18, item 6).

One helper for every place a URL can reach a person or a log shipper: ``config show``, error
messages and log records. The settings keep the real URL, so the Redis and MQTT clients still
get the password; only what is shown is masked. A leaf module: no emomon imports.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://netloc, anywhere in a text; the netloc ends where urlsplit ends it (/ ? # or space).
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<netloc>[^/?#\s'\"]*)")


def _mask_netloc(netloc: str) -> str:
    # The last '@' separates user info from the host, as in urlsplit; the first ':' in the user
    # info separates user from password, so a password holding ':' or '@' is masked whole.
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _password = userinfo.partition(":")
    return f"{user}:{MASK}@{host}" if colon else netloc


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    Works on a bare URL (``redis://emo:***@host:6379/0``) as well as on a sentence that quotes
    one, and on URLs too broken to parse, which is when error messages quote them.
    """
    return _URL.sub(lambda m: m["scheme"] + _mask_netloc(m["netloc"]), text)


class RedactingFilter(logging.Filter):
    """Masks URL passwords in every record a handler emits, whichever library logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


__all__ = ["MASK", "RedactingFilter", "redact_url"]
