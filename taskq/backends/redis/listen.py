"""The Redis result backend's shared pub/sub connection: every ``wait_for`` in a
process subscribes through one connection, read by one daemon thread."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import exceptions as redis_errors

__all__ = ["Connection", "Listener", "Watch"]

log = logging.getLogger("taskq.backends.redis")

# The listener wakes this often when nothing arrives, to notice a replaced connection.
_TICK = 1.0
# After this much silence the listener pings Redis; after twice as much the link is dead
# (a half-open TCP connection would otherwise leave every waiter asleep until its timeout).
_PING_AFTER = 30.0
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 5.0


class Connection(Protocol):
    """The part of a redis-py connection the listener uses (redis-py leaves it untyped)."""

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def send_command(self, *args: Any, check_health: bool = True) -> None: ...
    def can_read(self, timeout: float = 0) -> bool: ...
    def read_response(
        self, *, disconnect_on_error: bool = True, push_request: bool = False
    ) -> Any: ...


class Watch:
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
    watches: set[Watch] = field(default_factory=set)
    sent: int = 0  # SUBSCRIBE commands sent on the current connection
    acked: int = 0  # their confirmations read back (Redis replies in order)


class Listener:
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

    def __init__(self, new_connection: Callable[[], Connection]) -> None:
        self.pid = os.getpid()
        self._new_connection = new_connection
        self._lock = threading.Lock()
        self._channels: dict[bytes, _Channel] = {}
        self._conn: Connection | None = None
        self._generation = 0  # bumped on every new connection
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake = threading.Event()  # cuts the reconnect backoff short on close
        self._heard = 0.0
        self._pinged = False

    def watch(self, channel: bytes) -> Watch:
        """Subscribe a new watch to ``channel``.

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        watch = Watch(channel)
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

    def unwatch(self, watch: Watch) -> None:
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

    def _unwatch(self, watch: Watch) -> None:
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

    def _read(self, conn: Connection, generation: int) -> None:
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

    def _on_silence(self, conn: Connection, generation: int) -> None:
        silent = time.monotonic() - self._heard
        if silent > 2 * _PING_AFTER:
            raise redis_errors.TimeoutError(f"no reply from Redis for {silent:.0f}s")
        if silent > _PING_AFTER and not self._pinged:
            with self._lock:
                if generation == self._generation:
                    conn.send_command("PING", check_health=False)
            self._pinged = True
