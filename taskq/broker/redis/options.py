"""The Redis broker's options and the names of its own keys."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from taskq.errors import ConfigurationError
from taskq.redisclient.options import RedisOptions

__all__ = ["BrokerOptions", "Keys"]

log = logging.getLogger("taskq.broker")

#: kombu's Redis transport options (a Celery project's ``broker_transport_options``)
#: that are taskq options under another name.
KOMBU_RENAMED = {"visibility_timeout": "lease_timeout", "polling_interval": "poll_interval"}
#: kombu's options taskq's Redis broker does not use, and why; accepted with a warning.
KOMBU_UNUSED = {
    "ack_emulation": "taskq always leases messages until they are acknowledged",
    "unacked_key": "taskq keeps leases in its own keys (key_prefix)",
    "unacked_index_key": "taskq keeps leases in its own keys (key_prefix)",
    "unacked_mutex_key": "taskq keeps leases in its own keys (key_prefix)",
    "unacked_mutex_expire": "taskq's reaping needs no lock",
    "unacked_restore_limit": "taskq returns a dead consumer's messages in batches of its own",
    "unacked_restore_interval": "taskq reaps with every worker heartbeat",
    "unacked_restore_throttle": "taskq reaps with every worker heartbeat",
    "fanout_prefix": "it shapes kombu's fanout (broadcast) channels, not task queues",
    "fanout_patterns": "it shapes kombu's fanout (broadcast) channels, not task queues",
    "socket_keepalive": "not supported",
    "socket_keepalive_options": "not supported",
    "queue_order_strategy": "taskq serves priority lists first and rotates between queues",
    "health_check_interval": "a dropped connection is reconnected on its next command",
    "retry_on_timeout": "a timed-out command is retried once on a new connection",
    "client_name": "taskq names its connections taskq:<consumer>",
    "body_encoding": "taskq writes base64 bodies and reads base64 or plain ones",
    "deadletter_queue": "taskq's dead letters go to its own list (taskq dlq)",
}
#: kombu's options that change where messages live: another value would split the
#: queues between taskq and Celery, so only kombu's default is accepted.
KOMBU_LAYOUT = {"sep": "\x06\x16", "priority_steps": [0, 3, 6, 9], "global_keyprefix": ""}


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
        broker accepts (``taskq.broker.base.Broker``), means ``socket_connect_timeout``.

        kombu's Redis transport options are read as a Celery project sets them:
        ``visibility_timeout`` is ``lease_timeout`` (and wins over the lease the app
        passes), ``polling_interval`` is ``poll_interval``; those taskq does not use
        are logged and dropped; ``sep``, ``priority_steps`` and ``global_keyprefix``
        must keep kombu's defaults (another layout would split the queues).
        """
        options = dict(options)
        quarter = float(options.get("publish_timeout") or cls.publish_timeout) / 4
        connect = options.pop("connect_timeout", None)
        options.setdefault("socket_connect_timeout", min(connect or quarter, quarter))
        options.setdefault("socket_timeout", 2 * quarter)
        for kombu_name, name in KOMBU_RENAMED.items():
            if kombu_name in options:
                options[name] = options.pop(kombu_name)
                if kombu_name == "visibility_timeout":
                    _explain_visibility_timeout(options[name])
        for kombu_name, why in KOMBU_UNUSED.items():
            if kombu_name in options:
                value = options.pop(kombu_name)
                log.warning(
                    "Redis transport option %s=%r is kombu's; taskq does not use it: %s.",
                    kombu_name,
                    value,
                    why,
                )
        for kombu_name, default in KOMBU_LAYOUT.items():
            if kombu_name in options and options.pop(kombu_name) not in (default, None):
                raise ConfigurationError(
                    f"Redis transport option {kombu_name!r} must keep kombu's default "
                    f"({default!r}) with taskq: another value would put messages where "
                    "taskq (or Celery) does not look. Remove it."
                )
        return super().from_mapping(options)


def _explain_visibility_timeout(value: Any) -> None:
    level = logging.INFO
    with contextlib.suppress(TypeError, ValueError):  # from_mapping reports a bad value
        level = logging.WARNING if float(value) > 600 else logging.INFO
    log.log(
        level,
        "visibility_timeout=%r is taskq's lease_timeout: the messages of a worker that "
        "stopped heartbeating come back after it. taskq never redelivers a message while its "
        "worker is alive, so the long timeouts Celery needs for ETA tasks are not needed; "
        "a long one only delays recovery from a dead worker.",
        value,
    )


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
