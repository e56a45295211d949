"""The Redis result backend.

Keys and channels follow Celery's Redis backend: a ready state is stored with SET
under ``celery-task-meta-<id>``, and whoever waits on the channel named after that
key (Celery's clients, taskq's after a while: see ``wait_for``) is sent it there,
so Celery clients waiting on taskq results are woken, and the other way round.

Ready states are written by one script call (``RESULTS``), for one result or a
worker's batch of them: the SETs, then ``PUBSUB NUMSUB`` of their channels and of
the shared channel ``taskq-results``, then a PUBLISH only where someone listens:
the key's own channel for each result with a subscriber, and one message listing
the batch on the shared channel. Nothing is published when nobody waits.

``wait_for`` does not poll: every waiter in the process shares one pub/sub
connection (``taskq.backends.redis.listen``) subscribed to the shared channel
while anyone waits, so a waiter costs no SUBSCRIBE; it subscribes to its key's
own channel too only after ``OWN_CHANNEL_AFTER`` seconds, so results written by
Celery workers (which publish only there) wake it as well.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import redis
from redis import exceptions as redis_errors

from taskq.backends.base import Backend, not_ready_error
from taskq.backends.redis.chord import RedisChords
from taskq.backends.redis.listen import READY_UNREAD, Connection, Listener, Watch
from taskq.errors import BackendError
from taskq.redisclient.client import connection_pool, millis, translate
from taskq.redisclient.line import Line
from taskq.redisclient.options import RedisOptions
from taskq.result import READY_STATES, task_key
from taskq.urls import mask_url

log = logging.getLogger(__name__)

#: The channel a batch of ready states is announced on (after the key prefix).
SHARED_CHANNEL = "taskq-results"
#: Values up to this size travel in the shared message; a waiter reads bigger ones.
INLINE_MAX = 16384
#: Results one script call writes at most (Lua's ``unpack`` has a stack limit).
BATCH_MAX = 500
#: Seconds a waiter listens on the shared channel alone before subscribing to its
#: key's own channel too (where Celery workers publish).
OWN_CHANNEL_AFTER = 0.01

# KEYS: result keys. ARGV: expiry in ms (0: none), the shared channel, INLINE_MAX,
# then one value per key. Each value is SET, then published on its key's channel if
# that has subscribers; the shared channel, if it has any, gets one message:
# "<len>:<key><len>:<value>" per result, the value left out (length 0) when bigger
# than INLINE_MAX.
RESULTS = """
local px = tonumber(ARGV[1])
local n = #KEYS
for i = 1, n do
  if px > 0 then
    redis.call('SET', KEYS[i], ARGV[3 + i], 'PX', px)
  else
    redis.call('SET', KEYS[i], ARGV[3 + i])
  end
end
local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[2], unpack(KEYS))
local shared = tonumber(subs[2]) > 0
local limit = tonumber(ARGV[3])
local parts = {}
for i = 1, n do
  local value = ARGV[3 + i]
  if tonumber(subs[2 * i + 2]) > 0 then
    redis.call('PUBLISH', KEYS[i], value)
  end
  if shared then
    if #value > limit then value = '' end
    parts[#parts + 1] = #KEYS[i] .. ':' .. KEYS[i] .. #value .. ':' .. value
  end
end
if shared then
  redis.call('PUBLISH', ARGV[2], table.concat(parts))
end
return n
"""


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
        self._results = self._client.register_script(RESULTS)
        self._shared = self._prefix + SHARED_CHANNEL
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
        self.set_ready_many([(key, value)], expires)

    def set_ready_many(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        # One script call a chunk: the SETs, and a PUBLISH only where someone waits
        # (see the module doc and ``RESULTS``).
        px = 0 if expires is None else millis(expires)
        what = f"write {items[0][0]!r}" if len(items) == 1 else f"write {len(items)} results"
        with self._translate(what):
            for start in range(0, len(items), BATCH_MAX):
                chunk = items[start : start + BATCH_MAX]
                keys = [self._prefix + key for key, _ in chunk]
                args = [px, self._shared, INLINE_MAX, *(value for _, value in chunk)]
                self._run_results(keys, args)

    def _run_results(self, keys: list[str], args: list[Any]) -> None:
        with self._line.take() as line:
            if line is not None:
                try:
                    line.call("EVALSHA", self._results.sha, len(keys), *keys, *args)
                    return
                except redis_errors.NoScriptError:  # Redis restarted or flushed its scripts
                    pass
            self._results(keys, args)

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

        Reads the key; if not ready, watches it on the shared channel (see the module
        doc), reads it again once that watch is sure to see every batch published from
        then on (at once while the channel is subscribed), then sleeps until a batch
        names the key. After ``OWN_CHANNEL_AFTER`` seconds it
        subscribes to the key's own channel as well and reads the key again once
        that is confirmed: Celery workers publish only there.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
            BackendError: Redis could not be reached, or the backend was closed.
        """
        meta = self.meta(task_id)  # most results asked for are already there
        if meta["status"] in READY_STATES:
            return meta
        listener = self._get_listener()
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        key = (self._prefix + task_key(task_id)).encode()
        with self._translate("subscribe to results"):
            watch = listener.watch_key(key)
        own: Watch | None = None
        try:
            while True:
                watch.changed.clear()
                ready = self._check(watch, task_id)
                if ready is None and own is not None:
                    ready = self._check(own, task_id)
                if ready is not None:
                    return ready
                now = time.monotonic()
                remaining = None if deadline is None else deadline - now
                if remaining is not None and remaining <= 0:
                    raise not_ready_error(task_id, timeout)
                if own is None:
                    later = start + OWN_CHANNEL_AFTER - now
                    if later <= 0:
                        with self._translate("subscribe to results"):
                            own = listener.watch(key, watch.changed)
                        continue
                    remaining = later if remaining is None else min(remaining, later)
                watch.changed.wait(remaining)
        finally:
            listener.unwatch(watch)
            if own is not None:
                listener.unwatch(own)

    def _check(self, watch: Watch, task_id: str) -> dict[str, Any] | None:
        """The ready meta a watch has seen or can now read, else None."""
        if watch.closed:
            raise BackendError(
                f"Redis result backend {mask_url(self.url)} was closed while waiting "
                f"for task {task_id}."
            )
        message, watch.message = watch.message, None
        if message == READY_UNREAD:
            watch.checked = -1  # announced without its value: read the key below
        elif message is not None:
            meta = self.decode(message)
            if meta.get("task_id") != task_id:  # a result of another task: read the key
                watch.checked = -1
            elif meta["status"] in READY_STATES:
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
                self._listener = Listener(self._new_connection, self._shared.encode())
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
