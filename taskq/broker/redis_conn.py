"""How the Redis broker reaches Redis: options, connection pool, key names, errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from taskq.errors import BrokerError, ConfigurationError, did_you_mean
from taskq.urls import mask_url

__all__ = ["Keys", "RedisOptions", "make_pool", "mask_url", "translate", "unreachable"]

#: Options that may be 0 (the feature is off).
_MAY_BE_ZERO = frozenset({"ack_delay"})


@dataclass(frozen=True)
class RedisOptions:
    """Options of ``RedisBroker``; durations in seconds.

    Attributes:
        key_prefix: prefix of taskq's own keys (not of the queue lists).
        lease_timeout: seconds before a silent consumer's messages go back.
        socket_timeout: seconds a Redis reply may take.
        socket_connect_timeout: seconds a connection attempt may take.
        max_connections: cap on pooled connections (None: no cap).
        poll_interval: seconds between scans of the lists an idle consumer does
            not block on.
        ack_delay: longest a worker's acknowledgement waits to share a round trip
            with the next fetch (``Broker.ack_soon``); 0 sends each at once.
    """

    key_prefix: str = "taskq:"
    lease_timeout: float = 45.0
    socket_timeout: float | None = 30.0
    socket_connect_timeout: float | None = 5.0
    max_connections: int | None = None
    poll_interval: float = 0.25
    ack_delay: float = 0.1

    @classmethod
    def from_mapping(cls, options: dict[str, Any]) -> RedisOptions:
        """Validated options; numbers given as strings (from a URL or env) are accepted.

        Raises:
            ConfigurationError: an unknown option or a value of the wrong kind.
        """
        known = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        options = dict(options)
        if "connect_timeout" in options:  # the name every broker accepts (see base.Broker)
            options.setdefault("socket_connect_timeout", options.pop("connect_timeout"))
        for name, value in options.items():
            if name not in known:
                raise ConfigurationError(
                    f"Unknown Redis broker option {name!r}.{did_you_mean(name, known)} "
                    f"Known: {', '.join(known)}."
                )
            values[name] = _option_value(name, value)
        return cls(**values)


def _option_value(name: str, value: Any) -> Any:
    if name == "key_prefix":
        if not isinstance(value, str):
            raise ConfigurationError(f"Redis broker option key_prefix={value!r} must be a string.")
        return value
    if value is None and name in ("socket_timeout", "socket_connect_timeout", "max_connections"):
        return None
    number: float | None
    try:
        number = int(value) if name == "max_connections" else float(value)
    except (TypeError, ValueError):
        number = None
    if name == "max_connections":
        if number is None or number < 2:
            raise ConfigurationError(
                f"Redis broker option max_connections={value!r} must be an integer of at "
                "least 2 (the consumer blocks one connection while other threads ack)."
            )
    elif name in _MAY_BE_ZERO:
        if number is None or not number >= 0:  # also rejects NaN
            raise ConfigurationError(
                f"Redis broker option {name}={value!r} must be a number of seconds, "
                "0 or more (0 turns it off)."
            )
    elif number is None or not number > 0:  # also rejects NaN
        raise ConfigurationError(
            f"Redis broker option {name}={value!r} must be a positive number of seconds."
        )
    return number


@dataclass(frozen=True)
class Keys:
    """taskq's own key names for one consumer (see ``redis_scripts``)."""

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


def make_pool(url: str, settings: RedisOptions, client_name: str) -> redis.ConnectionPool:
    """The connection pool for ``url``.

    Raises:
        ConfigurationError: not a redis, rediss or unix URL, or an invalid one.
    """
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"Unsupported Redis URL scheme {scheme!r} in {mask_url(url)!r}. "
            "Use redis://host:port/db, rediss:// for TLS, or unix:///path/to/socket."
        )
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "client_name": client_name,
        # One quick retry reconnects a pooled connection Redis dropped (restart,
        # idle timeout); more would only delay the worker's own backoff loop.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
    }
    try:
        if settings.max_connections is None:
            return redis.ConnectionPool.from_url(url, **kwargs)
        return redis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.max_connections,
            timeout=settings.socket_timeout,
            **kwargs,
        )
    except ValueError as exc:
        raise ConfigurationError(f"Invalid Redis URL {mask_url(url)!r}: {exc}") from exc


@contextmanager
def translate(safe_url: str, doing: str) -> Iterator[None]:
    """Turn redis-py errors into ``BrokerError`` saying what failed and what to do."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise BrokerError(
            f"Could not {doing}: Redis at {safe_url} rejected the credentials "
            f"({exc}). Check the user and password in the broker URL."
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerError(
            f"Could not {doing}: Redis at {safe_url} is unreachable ({exc}). "
            "Check that Redis is running and the broker URL is right; workers reconnect "
            "with backoff."
        ) from exc
    except redis.RedisError as exc:
        raise BrokerError(f"Redis at {safe_url} refused to {doing}: {exc}") from exc


def unreachable(exc: BrokerError) -> bool:
    """True when ``exc`` (from ``translate``) means Redis could not be reached."""
    return isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError))
