"""The Redis broker's options and the names of its own keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from taskq.redisclient.options import RedisOptions

__all__ = ["BrokerOptions", "Keys"]


@dataclasses.dataclass(frozen=True)
class BrokerOptions(RedisOptions):
    """Options of ``RedisBroker`` (``broker_transport_options``); durations in seconds.

    Attributes:
        key_prefix: prefix of taskq's own keys (not of the queue lists).
        lease_timeout: seconds before a silent consumer's messages go back.
        poll_interval: seconds between scans of the lists an idle consumer does
            not block on.
        ack_delay: longest a worker's acknowledgement waits to share a round trip
            with the next fetch (``Broker.ack_soon``); 0 sends each at once.
        publish_timeout: the app's ``broker_publish_timeout``. Unless given,
            ``socket_timeout`` is half of it and ``socket_connect_timeout`` a
            quarter (a connect is tried twice; a publish whose reply timed out is
            not sent again), so one publish attempt takes at most half of it and a
            server that never answers, or never completes a TLS handshake, is
            detected within the deadline; a server that stalls for less than half
            of it (a fork for a save, a slow disk) delays a publish, it does not
            fail it.
    """

    socket_timeout: float | None = 2.5
    socket_connect_timeout: float | None = 1.25
    key_prefix: str = "taskq:"
    lease_timeout: float = 45.0
    poll_interval: float = 0.25
    ack_delay: float = 0.1
    publish_timeout: float = 5.0

    what: ClassVar[str] = "Redis broker option"
    may_be_zero: ClassVar[frozenset[str]] = frozenset({"ack_delay"})
    min_connections: ClassVar[int] = 2
    min_connections_reason: ClassVar[str] = (
        " (the consumer blocks one connection while other threads ack)"
    )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> BrokerOptions:
        """See ``RedisOptions.from_mapping``; ``connect_timeout``, the name every
        broker accepts (``taskq.broker.base.Broker``), means ``socket_connect_timeout``."""
        options = dict(options)
        quarter = float(options.get("publish_timeout") or cls.publish_timeout) / 4
        connect = options.pop("connect_timeout", None)
        options.setdefault("socket_connect_timeout", min(connect or quarter, quarter))
        options.setdefault("socket_timeout", 2 * quarter)
        return super().from_mapping(options)


@dataclasses.dataclass(frozen=True)
class Keys:
    """taskq's own key names for one consumer (see ``taskq.broker.redis.scripts``)."""

    consumers: str
    inflight: str
    landings: str
    landing_prefix: str
    deliveries: str
    delayed: str
    dlq: str

    @classmethod
    def make(cls, prefix: str, lease_id: str) -> Keys:
        return cls(
            consumers=f"{prefix}consumers",
            inflight=f"{prefix}inflight:{lease_id}",
            landings=f"{prefix}landings:{lease_id}",
            landing_prefix=f"{prefix}landing:{lease_id}:",
            deliveries=f"{prefix}deliveries",
            delayed=f"{prefix}delayed",
            dlq=f"{prefix}dlq",
        )
