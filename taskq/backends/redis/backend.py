"""The Redis result backend.

Keys and channels follow Celery's Redis backend: a ready state is stored with
SET and published on a channel named after its key, in one round trip, so Celery
clients waiting on taskq results are woken, and the other way round.

``wait_for`` does not poll: every waiter in the process shares one pub/sub
connection (``taskq.backends.redis.listen``), read by one daemon thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import redis
from redis import exceptions as redis_errors

from taskq.backends.base import Backend, not_ready_error
from taskq.backends.redis.chord import RedisChords
from taskq.backends.redis.listen import Connection, Listener, Watch
from taskq.errors import BackendError
from taskq.redisclient.client import connection_pool, millis, translate
from taskq.redisclient.line import Line
from taskq.redisclient.options import RedisOptions
from taskq.result import READY_STATES, task_key
from taskq.urls import mask_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendOptions(RedisOptions):
    """``result_backend_transport_options`` understood by the Redis backend.

    Attributes:
        max_connections: connections the command pool may open; threads beyond
            that wait (up to ``socket_timeout``) for a free one instead of failing.
            The pub/sub connection shared by ``wait_for`` comes on top.
        key_prefix: prepended to every key and channel, to share one database.

    The rest are ``RedisOptions``.
    """

    max_connections: int | None = 50
    key_prefix: str = ""

    what: ClassVar[str] = "Redis result backend option"


class RedisBackend(Backend):
    """Results in Redis (``redis://`` and ``rediss://`` URLs). Thread-safe.

    Connections come from a redis-py pool and are opened on first use. Redis
    errors are raised as ``BackendError`` naming the URL (password masked).
    """

    push_based = True

    def _configure(self) -> None:
        opts = BackendOptions.from_mapping(self.options)
        self._prefix = opts.key_prefix
        self._pool = connection_pool(self.url, opts)
        self._client = redis.Redis(connection_pool=self._pool)
        # The worker's per-task reads and writes skip redis-py's per-command layers
        # when the line is free (see taskq.redisclient.line).
        self._line = Line(self._client)
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        # Chords in Celery's keys: Celery and taskq workers share them.
        self.chords = RedisChords(
            self._client, self._prefix, self.expires, lambda doing: self._translate(doing)
        )

    # -- primitives ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._translate(f"read {key!r}"):
            return cast("bytes | None", self._line.run("GET", self._prefix + key))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._translate(f"read {len(keys)} keys"):
            values = self._line.run("MGET", *[self._prefix + key for key in keys])
        return cast("list[bytes | None]", values)

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        with self._translate(f"write {key!r}"):
            self._client.set(
                self._prefix + key, value, px=None if expires is None else millis(expires)
            )

    def delete(self, key: str) -> None:
        with self._translate(f"delete {key!r}"):
            self._client.delete(self._prefix + key)

    def incr(self, key: str, expires: float | None) -> int:
        with self._translate(f"increment {key!r}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.incr(self._prefix + key)
            if expires is not None:
                pipe.pexpire(self._prefix + key, millis(expires))
            return int(pipe.execute()[0])

    def add_member(self, key: str, member: str, expires: float | None) -> int:
        with self._translate(f"add a member to {key!r}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.sadd(self._prefix + key, member)
            pipe.scard(self._prefix + key)
            if expires is not None:
                pipe.pexpire(self._prefix + key, millis(expires))
            return int(pipe.execute()[1])

    def publish_ready(self, key: str, value: bytes) -> None:
        with self._translate(f"publish {key!r}"):
            self._client.publish(self._prefix + key, value)

    def set_ready(self, key: str, value: bytes, expires: float | None) -> None:
        # SET and PUBLISH in one round trip, as Celery's Redis backend does.
        name = self._prefix + key
        write = (
            ("SET", name, value) if expires is None else ("SET", name, value, "PX", millis(expires))
        )
        with self._translate(f"write {key!r}"), self._line.take() as line:
            if line is None:
                pipe = self._client.pipeline(transaction=True)
                queue: Callable[..., Any] = pipe.execute_command  # untyped in redis-py
                queue(*write)
                pipe.publish(name, value)
                pipe.execute()
                return
            replies = line.call_many([("MULTI",), write, ("PUBLISH", name, value), ("EXEC",)])
            done = replies[-1]  # EXEC: the replies of SET and PUBLISH, or an error
            for reply in [*replies[:-1], *(done if isinstance(done, list) else [done])]:
                if isinstance(reply, Exception):
                    raise reply

    def close(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._line.close()
        self._pool.disconnect()

    # -- waiting ---------------------------------------------------------------------

    def wait_for(
        self, task_id: str, timeout: float | None, interval: float = 0.1
    ) -> dict[str, Any]:
        """Block until the task is ready; return its meta. ``interval`` is unused.

        Subscribes to the task's channel, then reads its key, then sleeps until a
        message arrives, so a result stored between the two steps is not missed.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
            BackendError: Redis could not be reached, or the backend was closed.
        """
        meta = self.meta(task_id)  # most results asked for are already there
        if meta["status"] in READY_STATES:
            return meta
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._get_listener()
        with self._translate("subscribe to results"):
            watch = listener.watch((self._prefix + task_key(task_id)).encode())
        try:
            while True:
                watch.changed.clear()
                ready = self._check(watch, task_id)
                if ready is not None:
                    return ready
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise not_ready_error(task_id, timeout)
                watch.changed.wait(remaining)
        finally:
            listener.unwatch(watch)

    def _check(self, watch: Watch, task_id: str) -> dict[str, Any] | None:
        """The ready meta a watch has seen or can now read, else None."""
        if watch.closed:
            raise BackendError(
                f"Redis result backend {mask_url(self.url)} was closed while waiting "
                f"for task {task_id}."
            )
        if watch.message is not None:
            meta = self.decode(watch.message)
            if meta["status"] in READY_STATES:
                return meta
        if watch.subscribed > watch.checked:
            # Read the key after each confirmed SUBSCRIBE: the first covers a result
            # stored before we subscribed, later ones one stored during a reconnect.
            watch.checked = watch.subscribed
            meta = self.meta(task_id)
            if meta["status"] in READY_STATES:
                return meta
        return None

    def _get_listener(self) -> Listener:
        with self._listener_lock:
            # A forked child must not share its parent's socket or thread.
            if self._listener is None or self._listener.pid != os.getpid():
                self._listener = Listener(self._new_connection)
            return self._listener

    def _new_connection(self) -> Connection:
        # Built beside the pool, not from it: the listener never returns its connection,
        # and the pool would count every reconnect against max_connections for good.
        return cast(Connection, self._pool.connection_class(**self._pool.connection_kwargs))

    # -- errors ----------------------------------------------------------------------

    def recoverable(self, exc: BackendError) -> bool:
        """Unreachable, timed out, still loading its data (a ``ConnectionError``) or
        a read-only replica during a failover: worth retrying. Anything else (bad
        credentials, out of memory, a wrong key type) is not."""
        return isinstance(
            exc.__cause__,
            (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError),
        ) and not isinstance(exc.__cause__, redis_errors.AuthenticationError)

    def _translate(self, action: str) -> AbstractContextManager[None]:
        server = f"Redis result backend {mask_url(self.url)}"
        return translate(BackendError, server, action, "result_backend")
