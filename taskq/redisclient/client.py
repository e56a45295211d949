"""Connection pools for Redis URLs, and redis-py errors turned into taskq's.

``connection_pool`` is how the broker, the result backend and the beat lock
connect; ``translate`` is how each of them reports a failure: what it could not
do, the server (password masked), why, and what to check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from taskq.errors import ConfigurationError, TaskqError
from taskq.redisclient.options import RedisOptions
from taskq.urls import mask_url

__all__ = ["connection_pool", "millis", "translate", "unreachable"]

SCHEMES = ("redis", "rediss", "unix")


def connection_pool(
    url: str, options: RedisOptions, client_name: str | None = None
) -> redis.ConnectionPool:
    """A redis-py pool for ``url``; blocking (threads wait for a free connection)
    when ``options.max_connections`` caps it.

    Raises:
        ConfigurationError: not a redis, rediss or unix URL, or an invalid one.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"Unsupported Redis URL scheme {scheme!r} in {mask_url(url)!r}. "
            "Use redis://host:port/db, rediss:// for TLS, or unix:///path/to/socket."
        )
    _check_form(url)
    kwargs: dict[str, Any] = {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.socket_connect_timeout,
        # One quick retry reconnects a pooled connection Redis dropped (restart,
        # idle timeout); more would only delay the callers' own backoff.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
    }
    if client_name:
        kwargs["client_name"] = client_name
    try:
        if options.max_connections is None:
            pool = redis.ConnectionPool.from_url(url, **kwargs)
        else:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=options.max_connections,
                timeout=options.socket_timeout,
                **kwargs,
            )
    except ValueError as exc:
        raise ConfigurationError(f"Invalid Redis URL {mask_url(url)!r}: {exc}") from exc
    _check_options(url, pool)
    return pool


def _check_form(url: str) -> None:
    """Refuse URL forms redis-py would misread or fail on only when connecting."""
    parts = urlsplit(url)
    if "," in parts.netloc:
        raise ConfigurationError(
            f"Redis URL {mask_url(url)!r} names several hosts. taskq talks to one Redis "
            "server (no Sentinel or Cluster): give the current primary's redis://host:port/db."
        )
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    if database and not database.isdigit():
        raise ConfigurationError(
            f"Redis URL {mask_url(url)!r}: the path must be a database number "
            f"(redis://host:6379/0), got {database!r}."
        )


def _check_options(url: str, pool: redis.ConnectionPool) -> None:
    """Build one connection (it does not connect) so that a query option redis-py does
    not take fails now, named, rather than as a TypeError at the first command."""
    try:
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, redis.RedisError) as exc:
        options = sorted(k for k, _ in parse_qsl(urlsplit(url).query))
        hint = (
            " For TLS use a rediss:// URL (ssl=true is not a Redis URL option)."
            if any(name.lower() == "ssl" for name in options)
            else ""
        )
        raise ConfigurationError(
            f"Redis URL {mask_url(url)!r} has an option redis-py cannot use "
            f"({', '.join(options) or 'none given'}): {exc}.{hint}"
        ) from exc


@contextmanager
def translate(error: type[TaskqError], server: str, doing: str, setting: str) -> Iterator[None]:
    """Raise redis-py errors as ``error`` saying what failed and what to do.

    Args:
        error: the taskq exception to raise (``BrokerError``, ``BackendError``).
        server: how to name the server, with its URL masked ("Redis at redis://...").
        doing: what was being done ("publish to queue 'celery'").
        setting: the setting holding the URL and options, for the hint.
    """
    try:
        yield
    except redis.RedisError as exc:
        tls = "rediss://" in server
        raise error(
            f"{server} could not {doing}: {_why(exc, tls)} ({exc}). {_hint(exc, setting, tls)}"
        ) from exc


def _why(exc: redis.RedisError, tls: bool) -> str:
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError):
        return "it rejected the credentials"
    if isinstance(exc, redis.ConnectionError) and "No connection available" in text:
        return "every pooled connection is in use"
    if tls and ("SSL" in text or "connecting" in text):
        return "the TLS handshake did not complete (a rediss:// URL for a server without TLS?)"
    if isinstance(exc, redis.TimeoutError) or "Timeout" in text:
        return "it did not answer in time"
    if isinstance(exc, redis.ConnectionError):
        return "it is unreachable"
    return "it refused"


def _hint(exc: redis.RedisError, setting: str, tls: bool = False) -> str:
    if isinstance(exc, redis.AuthenticationError):
        return f"Check the user and password in {setting}."
    if isinstance(exc, redis.ConnectionError) and "No connection available" in str(exc):
        return f"Raise max_connections in the transport options of {setting}."
    if tls and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return (
            f"Check that this server speaks TLS on that port, or use redis:// in {setting} "
            "for a plain-text one."
        )
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return (
            f"Check that Redis is running and answering, and that {setting} is right "
            "(rediss:// if the server requires TLS; socket_timeout and "
            "socket_connect_timeout are transport options)."
        )
    if isinstance(exc, redis.ResponseError) and "WRONGTYPE" in str(exc):
        return "Something else stores other data under these keys; set a distinct key_prefix."
    return "Check the Redis server's log and configuration."


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (raised by ``translate``) means Redis could not be reached."""
    return isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError))


def millis(seconds: float) -> int:
    """Seconds as the positive integer milliseconds PX and PEXPIRE take; anything
    under 1 ms still means "gone at once"."""
    return max(1, round(seconds * 1000))
