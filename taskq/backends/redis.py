"""The Redis result backend.

Keys and channels follow Celery's Redis backend: a ready state is stored with
SET and published on a channel named after its key, in one round trip, so Celery
clients waiting on taskq results are woken, and the other way round.

``wait_for`` does not poll: every waiter in the process shares one pub/sub
connection (``_Listener``), read by one daemon thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, cast

import redis
from redis import exceptions as redis_errors

from taskq.backends.base import READY_STATES, Backend, masked_url, not_ready_error, task_key
from taskq.errors import BackendError, ConfigurationError, did_you_mean

log = logging.getLogger(__name__)

# The listener wakes this often when nothing arrives, to notice a replaced connection.
_TICK = 1.0
# After this much silence the listener pings Redis; after twice as much the link is dead
# (a half-open TCP connection would otherwise leave every waiter asleep until its timeout).
_PING_AFTER = 30.0
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0


@dataclass(frozen=True)
class RedisOptions:
    """``result_backend_transport_options`` understood by the Redis backend.

    Attributes:
        socket_timeout: seconds to wait for a reply (None: forever).
        socket_connect_timeout: seconds to wait for a connection (None: forever).
        max_connections: connections the command pool may open; threads beyond
            that wait (up to ``socket_timeout``) for a free one instead of failing.
            The pub/sub connection shared by ``wait_for`` comes on top.
        key_prefix: prepended to every key and channel, to share one database.
    """

    socket_timeout: float | None = 30.0
    socket_connect_timeout: float | None = 5.0
    max_connections: int = 50
    key_prefix: str = ""

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> RedisOptions:
        """Build from a mapping; unknown names and bad values raise ``ConfigurationError``."""
        known = [f.name for f in fields(cls)]
        for name in options:
            if name not in known:
                raise ConfigurationError(
                    f"Unknown Redis result backend option {name!r}.{did_you_mean(name, known)} "
                    f"Known: {', '.join(known)}."
                )
        opts = cls(**options)
        _require_positive("socket_timeout", opts.socket_timeout, optional=True)
        _require_positive("socket_connect_timeout", opts.socket_connect_timeout, optional=True)
        _require_positive("max_connections", opts.max_connections, integer=True)
        if not isinstance(opts.key_prefix, str):
            raise ConfigurationError(
                f"Redis result backend option key_prefix={opts.key_prefix!r} must be a string."
            )
        return opts


def _require_positive(
    name: str, value: Any, *, integer: bool = False, optional: bool = False
) -> None:
    if value is None and optional:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ConfigurationError(
            f"Redis result backend option {name}={value!r} must be {what}"
            f"{' or None' if optional else ''}."
        )


class RedisBackend(Backend):
    """Results in Redis (``redis://`` and ``rediss://`` URLs). Thread-safe.

    Connections come from a redis-py pool and are opened on first use. Redis
    errors are raised as ``BackendError`` naming the URL (password masked).
    """

    push_based = True

    def _configure(self) -> None:
        opts = RedisOptions.from_mapping(self.options)
        self._prefix = opts.key_prefix
        self._pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=opts.max_connections,
            timeout=opts.socket_timeout,
            socket_timeout=opts.socket_timeout,
            socket_connect_timeout=opts.socket_connect_timeout,
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()

    # -- primitives ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._translate(f"read {key!r}"):
            return cast("bytes | None", self._client.get(self._prefix + key))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._translate(f"read {len(keys)} keys"):
            values = self._client.mget([self._prefix + key for key in keys])
        return cast("list[bytes | None]", values)

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        with self._translate(f"write {key!r}"):
            self._client.set(
                self._prefix + key, value, px=None if expires is None else _millis(expires)
            )

    def delete(self, key: str) -> None:
        with self._translate(f"delete {key!r}"):
            self._client.delete(self._prefix + key)

    def incr(self, key: str, expires: float | None) -> int:
        with self._translate(f"increment {key!r}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.incr(self._prefix + key)
            if expires is not None:
                pipe.pexpire(self._prefix + key, _millis(expires))
            return int(pipe.execute()[0])

    def add_member(self, key: str, member: str, expires: float | None) -> int:
        with self._translate(f"add a member to {key!r}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.sadd(self._prefix + key, member)
            pipe.scard(self._prefix + key)
            if expires is not None:
                pipe.pexpire(self._prefix + key, _millis(expires))
            return int(pipe.execute()[1])

    def publish_ready(self, key: str, value: bytes) -> None:
        with self._translate(f"publish {key!r}"):
            self._client.publish(self._prefix + key, value)

    def set_ready(self, key: str, value: bytes, expires: float | None) -> None:
        # SET and PUBLISH in one round trip, as Celery's Redis backend does.
        with self._translate(f"write {key!r}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._prefix + key, value, px=None if expires is None else _millis(expires))
            pipe.publish(self._prefix + key, value)
            pipe.execute()

    def close(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
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

    def _check(self, watch: _Watch, task_id: str) -> dict[str, Any] | None:
        """The ready meta a watch has seen or can now read, else None."""
        if watch.closed:
            raise BackendError(
                f"Redis result backend {masked_url(self.url)} was closed while waiting "
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

    def _get_listener(self) -> _Listener:
        with self._listener_lock:
            # A forked child must not share its parent's socket or thread.
            if self._listener is None or self._listener.pid != os.getpid():
                self._listener = _Listener(self._new_connection)
            return self._listener

    def _new_connection(self) -> _Connection:
        # Built beside the pool, not from it: the listener never returns its connection,
        # and the pool would count every reconnect against max_connections for good.
        return cast(_Connection, self._pool.connection_class(**self._pool.connection_kwargs))

    # -- errors ----------------------------------------------------------------------

    def recoverable(self, exc: BackendError) -> bool:
        """Unreachable, timed out, still loading its data (a ``ConnectionError``) or
        a read-only replica during a failover: worth retrying. Anything else (bad
        credentials, out of memory, a wrong key type) is not."""
        return isinstance(
            exc.__cause__,
            (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError),
        ) and not isinstance(exc.__cause__, redis_errors.AuthenticationError)

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except redis_errors.RedisError as exc:
            raise BackendError(
                f"Redis result backend {masked_url(self.url)} could not {action}: {exc}. "
                f"{_hint(exc)}"
            ) from exc


def _millis(seconds: float) -> int:
    # PX needs a positive integer; an expiry under 1 ms still means "gone at once".
    return max(1, round(seconds * 1000))


def _hint(exc: redis_errors.RedisError) -> str:
    if isinstance(exc, redis_errors.AuthenticationError):
        return "Check the user name and password in the result_backend URL."
    if isinstance(exc, redis_errors.MaxConnectionsError) or "No connection available" in str(exc):
        return "Raise max_connections in result_backend_transport_options."
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return (
            "Is Redis running and reachable at that address? Check result_backend, and "
            "socket_timeout / socket_connect_timeout in result_backend_transport_options."
        )
    if isinstance(exc, redis_errors.ResponseError) and "WRONGTYPE" in str(exc):
        return "Something else stores other data under these keys; set a distinct key_prefix."
    return "Check the Redis server's log and configuration."


# -- shared pub/sub ----------------------------------------------------------------------


class _Connection(Protocol):
    """The part of a redis-py connection the listener uses (redis-py leaves it untyped)."""

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def send_command(self, *args: Any, check_health: bool = True) -> None: ...
    def can_read(self, timeout: float = 0) -> bool: ...
    def read_response(
        self, *, disconnect_on_error: bool = True, push_request: bool = False
    ) -> Any: ...


class _Watch:
    """One ``wait_for`` call's subscription.

    The listener updates the fields under its lock, then sets ``changed``.
    """

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.changed = threading.Event()
        self.need = 0  # the channel's SUBSCRIBE count whose confirmation makes us subscribed
        self.subscribed = 0  # confirmations seen (one per connection)
        self.checked = 0  # confirmations after which the waiter has read the key
        self.message: bytes | None = None  # the last payload published on the channel
        self.closed = False


@dataclass(eq=False)
class _Channel:
    watches: set[_Watch] = field(default_factory=set)
    sent: int = 0  # SUBSCRIBE commands sent on the current connection
    acked: int = 0  # their confirmations read back (Redis replies in order)


class _Listener:
    """One pub/sub connection shared by every ``wait_for`` of a backend in a process.

    Waiters add a watch (SUBSCRIBE is sent from their thread) and a daemon thread
    reads confirmations and messages and wakes the watches of their channel. A
    watch counts as subscribed once Redis confirmed the SUBSCRIBE it needs, so
    the waiter can read the key then without missing a publish.

    When the connection breaks, the thread reconnects with backoff and subscribes
    every watched channel again; each watch is confirmed anew, so its waiter reads
    the key again and finds a result published while nobody was listening.
    Connections are never reused: a stale one is only ever disconnected.
    """

    def __init__(self, new_connection: Callable[[], _Connection]) -> None:
        self.pid = os.getpid()
        self._new_connection = new_connection
        self._lock = threading.Lock()
        self._channels: dict[bytes, _Channel] = {}
        self._conn: _Connection | None = None
        self._generation = 0  # bumped on every new connection
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake = threading.Event()  # cuts the reconnect backoff short on close
        self._heard = 0.0
        self._pinged = False

    def watch(self, channel: bytes) -> _Watch:
        """Subscribe a new watch to ``channel``.

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        watch = _Watch(channel)
        with self._lock:
            if self._closed:
                raise redis_errors.ConnectionError("the backend was closed")
            entry = self._channels.setdefault(channel, _Channel())
            entry.watches.add(watch)
            try:
                if self._conn is not None and len(entry.watches) == 1:
                    self._subscribe([channel])
            except Exception:
                self._drop()  # a stale connection: open a new one below
            if self._conn is None:
                try:
                    self._connect()  # subscribes every watched channel, this one too
                except Exception:
                    self._drop()
                    self._unwatch(watch)
                    raise
            watch.need = entry.sent
            if entry.acked >= entry.sent:
                watch.subscribed = 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="taskq-redis-results", daemon=True
                )
                self._thread.start()
        return watch

    def unwatch(self, watch: _Watch) -> None:
        with self._lock:
            self._unwatch(watch)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for entry in self._channels.values():
                for watch in entry.watches:
                    watch.closed = True
                    watch.changed.set()
            self._drop()
        self._wake.set()

    # -- the caller holds the lock ---------------------------------------------------

    def _unwatch(self, watch: _Watch) -> None:
        entry = self._channels.get(watch.channel)
        if entry is None or watch not in entry.watches:
            return
        entry.watches.remove(watch)
        if entry.watches:
            return
        if entry.acked >= entry.sent:  # else the pending confirmation removes it
            del self._channels[watch.channel]
        if self._conn is not None:
            try:
                self._conn.send_command("UNSUBSCRIBE", watch.channel, check_health=False)
            except Exception:
                self._drop()

    def _connect(self) -> None:
        conn = self._new_connection()
        self._conn = conn
        self._generation += 1
        self._heard, self._pinged = time.monotonic(), False
        conn.connect()
        watched = [name for name, entry in self._channels.items() if entry.watches]
        if watched:
            self._subscribe(watched)

    def _subscribe(self, channels: list[bytes]) -> None:
        assert self._conn is not None
        self._conn.send_command("SUBSCRIBE", *channels, check_health=False)
        for name in channels:
            entry = self._channels[name]
            entry.sent += 1
            for watch in entry.watches:
                watch.need = entry.sent

    def _drop(self) -> None:
        """Forget the connection; the listener thread opens a new one if needed."""
        conn, self._conn = self._conn, None
        self._generation += 1
        if conn is not None:
            conn.disconnect()  # shuts the socket down, which wakes a blocked reader
        for name, entry in list(self._channels.items()):
            if entry.watches:
                entry.sent = entry.acked = 0
            else:
                del self._channels[name]

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) != 3:
            return  # PONG, or a reply we have no use for
        kind, channel, payload = reply
        entry = self._channels.get(channel)
        if entry is None:
            return
        if kind == b"message":
            for watch in entry.watches:
                watch.message = payload
                watch.changed.set()
        elif kind == b"subscribe":
            entry.acked += 1
            for watch in entry.watches:
                if watch.need == entry.acked:
                    watch.subscribed += 1
                    watch.changed.set()
            if not entry.watches and entry.acked >= entry.sent:
                del self._channels[channel]

    # -- the listener thread ---------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            with self._lock:
                if self._closed or (self._conn is None and not self._channels):
                    self._thread = None
                    return
                if self._conn is None:
                    try:
                        self._connect()
                        backoff = _BACKOFF_MIN
                    except Exception as exc:
                        log.warning("Redis results: reconnect failed (%s); retrying.", exc)
                        self._drop()
                conn, generation = self._conn, self._generation
            if conn is None:
                self._wake.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            try:
                self._read(conn, generation)
            except Exception as exc:
                with self._lock:
                    if generation == self._generation:
                        if not isinstance(exc, (redis_errors.RedisError, OSError)):
                            log.exception("Redis results: listener failed; reconnecting.")
                        self._drop()
            if generation != self._generation:
                conn.disconnect()  # redis-py may have reconnected it behind our back

    def _read(self, conn: _Connection, generation: int) -> None:
        if generation != self._generation:
            return  # replaced: reading would make redis-py reconnect the old one
        if not conn.can_read(timeout=_TICK):
            self._on_silence(conn, generation)
            return
        reply = conn.read_response(disconnect_on_error=False, push_request=True)
        self._heard, self._pinged = time.monotonic(), False
        with self._lock:
            if generation == self._generation:
                self._dispatch(reply)

    def _on_silence(self, conn: _Connection, generation: int) -> None:
        silent = time.monotonic() - self._heard
        if silent > 2 * _PING_AFTER:
            raise redis_errors.TimeoutError(f"no reply from Redis for {silent:.0f}s")
        if silent > _PING_AFTER and not self._pinged:
            with self._lock:
                if generation == self._generation:
                    conn.send_command("PING", check_health=False)
            self._pinged = True
