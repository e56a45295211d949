"""The Redis result backend's shared pub/sub connection: every ``wait_for`` in a
process subscribes through one connection, read by one daemon thread.

Two kinds of watch: one on a channel of its own (``watch``: the key's channel, as
Celery clients wait), and one on a key announced on the shared channel
(``watch_key``: the batches the backend's ``RESULTS`` script publishes there). The
shared channel stays subscribed while anyone watches a key and ``LINGER`` seconds
after, so a process that waits on result after result subscribes once.
"""

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
#: Seconds the shared channel stays subscribed after its last key watch ended.
LINGER = 5.0
#: What ``Watch.message`` holds when the shared channel said the key is ready
#: without its value (too big to travel there): the waiter reads the key.
READY_UNREAD = b""


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

    def __init__(
        self, channel: bytes, key: bytes | None = None, changed: threading.Event | None = None
    ) -> None:
        self.channel = channel
        #: The key watched on the shared channel (None: a watch of ``channel`` itself).
        self.key = key
        self.changed = changed if changed is not None else threading.Event()
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

    def __init__(
        self, new_connection: Callable[[], Connection], shared: bytes = b"taskq-results"
    ) -> None:
        self.pid = os.getpid()
        self._new_connection = new_connection
        self._lock = threading.Lock()
        self._channels: dict[bytes, _Channel] = {}
        self._shared = shared
        self._keys: dict[bytes, set[Watch]] = {}  # key watches on the shared channel
        self._anchor: Watch | None = None  # keeps the shared channel subscribed (LINGER)
        self._last_key_watch = 0.0  # monotonic: when the last key watch ended
        self._conn: Connection | None = None
        self._generation = 0  # bumped on every new connection
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake = threading.Event()  # cuts the reconnect backoff short on close
        self._heard = 0.0
        self._pinged = False

    def watch(self, channel: bytes, changed: threading.Event | None = None) -> Watch:
        """Subscribe a new watch to ``channel`` (``changed``: an event to share with
        another watch of the same waiter).

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        return self._add(Watch(channel, None, changed))

    def watch_key(self, key: bytes) -> Watch:
        """A new watch of ``key`` on the shared channel: ``message`` is the key's value
        (or ``READY_UNREAD``) once a batch naming it is published. Costs Redis nothing
        while the shared channel is subscribed (``subscribed`` is then 1 at once).

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        with self._lock:
            if self._anchor is None and not self._closed:
                self._anchor = Watch(self._shared)
                anchor = self._anchor
            else:
                anchor = None
        if anchor is not None:
            try:
                self._add(anchor)
            except Exception:
                with self._lock:
                    self._anchor = None
                raise
        watch = self._add(Watch(self._shared, key))
        with self._lock:
            self._keys.setdefault(key, set()).add(watch)
        return watch

    def _add(self, watch: Watch) -> Watch:
        channel = watch.channel
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
        if watch.key is not None:
            watches = self._keys.get(watch.key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._keys[watch.key]
                    if not self._keys:
                        self._last_key_watch = time.monotonic()
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
        if kind == b"message" and channel == self._shared:
            if self._keys:
                try:
                    self._announced(payload)
                except (ValueError, IndexError):  # not written by the results script
                    log.warning("Redis results: ignored a malformed message on %r", channel)
        elif kind == b"message":
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

    def _announced(self, payload: bytes) -> None:
        """Wake the key watches a shared-channel batch names: ``<len>:<key><len>:<value>``
        per result (see the backend's ``RESULTS`` script)."""
        keys, pos, end = self._keys, 0, len(payload)
        while pos < end:
            colon = payload.index(b":", pos)
            start = colon + 1
            key = payload[start : start + int(payload[pos:colon])]
            colon = payload.index(b":", start + len(key))
            pos = colon + 1 + int(payload[start + len(key) : colon])
            watches = keys.get(key)
            if watches:
                value = payload[colon + 1 : pos]
                for watch in watches:
                    watch.message = value
                    watch.changed.set()

    def _linger(self) -> None:
        """Unsubscribe the shared channel once nobody watched a key for ``LINGER`` s."""
        if self._anchor is None or self._keys:
            return
        if time.monotonic() - self._last_key_watch > LINGER:
            with self._lock:
                if self._anchor is not None and not self._keys:
                    anchor, self._anchor = self._anchor, None
                    self._unwatch(anchor)

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
            self._linger()
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
