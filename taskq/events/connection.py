"""The kombu connection events and remote control travel on.

Tasks go through taskq's own brokers, but events and control messages are
broadcasts, which Celery's tools send and read with kombu. taskq opens a kombu
connection to the same URL for them, so the exchanges, queues and Redis channels
are the ones Celery uses, declared by the same library. The SQLite broker has no
way to broadcast to other processes, so neither events nor remote control exist
there (``broadcasts`` says so, with a message a person can act on).
"""

from __future__ import annotations

import kombu

from taskq.errors import ConfigurationError
from taskq.urls import mask_url

#: URL schemes whose kombu transport can broadcast (fanout exchanges).
BROADCAST_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "memory")


def broadcasts(url: str) -> bool:
    """True when events and remote control work on the broker at ``url``."""
    return url.split("://", 1)[0] in BROADCAST_SCHEMES


def unsupported(url: str, what: str) -> ConfigurationError:
    """The error for ``what`` (``"Remote control"``, ``"Events"``) on a broker that
    cannot broadcast."""
    return ConfigurationError(
        f"{what} needs a broker that can broadcast to every worker, and "
        f"{mask_url(url)!r} cannot (the SQLite broker is local to one machine and has "
        "no fanout). Use a redis:// or amqp:// broker for events, inspect and control; "
        "results and revokes (app.control.revoke) still work on SQLite."
    )


def connect(url: str, *, connect_timeout: float | None, what: str) -> kombu.Connection:
    """A kombu connection (not opened yet) to the broker at ``url``.

    Raises:
        ConfigurationError: the broker cannot broadcast (see ``unsupported``).
    """
    if not broadcasts(url):
        raise unsupported(url, what)
    return kombu.Connection(url, connect_timeout=connect_timeout or 4.0)
