"""Which of several beat processes sends: leases and per-run claims.

``LocalBeatLock`` serves a single beat. ``RedisBeatLock`` lets several beats run
at once for high availability: one holds a lease and sends; the others stand by
and take over when it stops renewing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import redis

from taskq.errors import BackendError
from taskq.redisclient.client import connection_pool, millis, translate
from taskq.redisclient.options import RedisOptions
from taskq.urls import mask_url


class BeatLock(Protocol):
    """Decides which of several beats sends (high availability)."""

    def acquire_or_renew(self, owner: str, ttl: float) -> bool:
        """Take the lease if it is free or extend it if ``owner`` holds it, for ``ttl``
        seconds; True while ``owner`` holds it."""
        ...

    def release(self, owner: str) -> None:
        """Give the lease up at once if ``owner`` holds it; otherwise do nothing."""
        ...

    def claim_tick(self, name: str, due_iso: str, ttl: float) -> bool:
        """True for the first claim of (``name``, ``due_iso``) within ``ttl`` seconds,
        across every beat sharing the lock; False for any later claim."""
        ...


class LocalBeatLock:
    """For a single beat process: always the owner; claims kept in memory until their ttl."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._claims: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def acquire_or_renew(self, owner: str, ttl: float) -> bool:
        return True

    def release(self, owner: str) -> None:
        pass

    def claim_tick(self, name: str, due_iso: str, ttl: float) -> bool:
        now = self._clock()
        with self._lock:
            self._claims = {key: until for key, until in self._claims.items() if until > now}
            if (name, due_iso) in self._claims:
                return False
            self._claims[(name, due_iso)] = now + ttl
            return True


# Only the owner may renew or drop the lease: compare and act in one atomic script.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisBeatLock:
    """A lease in Redis: ``<prefix>lease`` holds the owner's id and expires after ttl.

    Taking a free lease is SET NX PX; renewing and releasing compare the owner in a
    Lua script, so a beat whose lease ran out cannot extend or delete its
    successor's. ``claim_tick`` is SET NX PX on ``<prefix>tick:<name>:<due_iso>``.

    Raises:
        ConfigurationError: the URL cannot be parsed.
        BackendError: Redis fails (the URL is named with its password masked).
    """

    def __init__(self, redis_url: str, key_prefix: str = "taskq-beat:") -> None:
        self.url = redis_url
        self.key_prefix = key_prefix
        options = RedisOptions(socket_timeout=5.0, socket_connect_timeout=5.0)
        self._client = redis.Redis(connection_pool=connection_pool(redis_url, options))
        self._lease_key = f"{key_prefix}lease"
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)

    def acquire_or_renew(self, owner: str, ttl: float) -> bool:
        with self._translate("renew the beat lease"):
            if self._renew(keys=[self._lease_key], args=[owner, millis(ttl)]):
                return True
            return bool(self._client.set(self._lease_key, owner, nx=True, px=millis(ttl)))

    def release(self, owner: str) -> None:
        with self._translate("release the beat lease"):
            self._release(keys=[self._lease_key], args=[owner])

    def claim_tick(self, name: str, due_iso: str, ttl: float) -> bool:
        key = f"{self.key_prefix}tick:{name}:{due_iso}"
        with self._translate("claim a beat run"):
            return bool(self._client.set(key, b"1", nx=True, px=millis(ttl)))

    def holder(self) -> str | None:
        """The owner id holding the lease now, or None."""
        with self._translate("read the beat lease"):
            value = self._client.get(self._lease_key)
        return value.decode() if isinstance(value, bytes) else value

    def close(self) -> None:
        self._client.close()

    def _translate(self, action: str) -> AbstractContextManager[None]:
        server = f"The beat lock's Redis {mask_url(self.url)}"
        return translate(BackendError, server, action, "broker_url / result_backend")
