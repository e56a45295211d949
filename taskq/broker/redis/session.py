"""What the parts of one Redis broker share: connections, names, options, errors.

A ``RedisBroker`` is made of parts (``Fetcher``, ``Settler``, ``DeadLetterList``)
that work on the same consumer's keys through the same connections. Each is
handed this broker's ``Session`` and takes what it uses from it; none of them
calls back into the broker. The session owns the connections and closes them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager

import redis

from taskq.broker.lease import LeaseClock
from taskq.broker.redis.options import BrokerOptions, Keys
from taskq.errors import BrokerError
from taskq.redisclient.client import connection_pool, translate
from taskq.redisclient.line import Line
from taskq.urls import mask_url

__all__ = ["Session"]

logger = logging.getLogger("taskq.broker.redis")


class Session:
    """One broker instance's connections, key names, options and lease id.

    Args:
        url: the broker URL (``redis://``, ``rediss://`` or ``unix://``).
        consumer_id: the broker's consumer id; the lease id adds a random part, so
            a restarted worker reusing its name never inherits (and keeps alive) its
            predecessor's leases.
        settings: the broker's validated options.
        lease_id: act on this existing lease instead of a new one (a prefork
            parent settling what a dead child held).

    Attributes:
        settings: the broker's options.
        tag_base: the random part of the lease id; delivery tags start with it.
        lease_id: ``<consumer_id>.<tag_base>``, this consumer's name in Redis. Its
            connections are named ``taskq:<lease_id>`` (``CLIENT LIST`` shows them).
        keys: taskq's own key names for this consumer (``Keys``).
        client: the pooled redis-py client.
        line: the broker's own connection for publish and fetch (``Line``).
        clock: when the lease was last renewed, by any part (``LeaseClock``).

    Raises:
        ConfigurationError: the URL is not a Redis URL, or is invalid.
    """

    def __init__(
        self, url: str, consumer_id: str, settings: BrokerOptions, lease_id: str | None = None
    ) -> None:
        self.settings = settings
        self.tag_base = uuid.uuid4().hex[:16]
        self.lease_id = lease_id or f"{consumer_id}.{self.tag_base}"
        self.keys = Keys.make(settings.key_prefix, self.lease_id)
        self._server = f"Redis at {mask_url(url)}"
        self._pool = connection_pool(url, settings, f"taskq:{self.lease_id}")
        self.client = redis.Redis(connection_pool=self._pool)
        self.line = Line(self.client)
        self.clock = LeaseClock(settings.lease_timeout)

    def translate(self, doing: str) -> AbstractContextManager[None]:
        """Raise redis-py errors inside the block as ``BrokerError`` saying what
        could not be done (``doing``) and what to check."""
        return translate(BrokerError, self._server, doing, "broker_url")

    def refused(self, doing: str, errors: Sequence[bytes]) -> BrokerError:
        """The error for a script that did nothing because lists refused it."""
        return BrokerError(
            f"{self._server} refused to {doing}: {_text(errors)}. A queue key holds "
            "something other than a list; delete or rename it."
        )

    def log_refused(self, doing: str, errors: Sequence[bytes]) -> None:
        """Log the lists a script could not write to (it did the rest of its work)."""
        logger.error("Redis broker could not %s some lists: %s", doing, _text(errors))

    def close(self) -> None:
        """Close the broker's connections (a later call opens new ones)."""
        self.line.close()
        self._pool.disconnect()


def _text(errors: Sequence[bytes]) -> str:
    return "; ".join(error.decode("utf-8", "replace") for error in errors)
