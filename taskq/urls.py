"""Showing a server URL to a person: the one place a password is masked.

Every log line, banner, ``repr`` and error message that names a broker or backend
URL goes through ``mask_url``, so a password never reaches output. Nothing here
connects or imports a transport: printing a URL must work for any scheme, even
one whose client library is not installed.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "mask_url"]

#: What a password is replaced with.
MASK = "***"

# ``password=...`` in a query string (redis-py and SQLAlchemy accept it there).
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*")
# ``user:password@`` right after ``scheme://``, for URLs urlsplit cannot parse.
_USERINFO_PASSWORD = re.compile(r"^([^:/?#]+://[^:@/?#]*):[^@/?#]*@")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; a URL without one is unchanged.

    >>> mask_url("amqp://guest:secret@host:5672//")
    'amqp://guest:***@host:5672//'
    >>> mask_url("redis://host:6379/0")
    'redis://host:6379/0'

    A failover list (kombu's ``amqp://a//;amqp://b//``) is masked URL by URL.
    """
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed port or bracket: fall back to a plain pattern
        masked = _USERINFO_PASSWORD.sub(rf"\1:{MASK}@", url)
    else:
        masked = url
        if password is not None:
            userinfo, _, host = parts.netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            masked = urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    return _QUERY_PASSWORD.sub(rf"\1{MASK}", masked)
