"""A Redis connection of the broker's own for its hot calls (publish and fetch).

redis-py 8 wraps every command in retry, event and metrics layers and a pool
checkout and return. On the 2-core machine of ``docs/performance.md`` that costs
about 80 us per command on top of a 40 us loopback round trip: more than the round
trip itself. A ``Line`` sends packed commands on one connection it keeps (built
with the pool's own settings: parser, timeouts, credentials, client name) and reads
the replies straight back.

One thread uses a line at a time. A thread that finds it busy gets ``None`` from
``take`` (``run`` does this itself) and goes through the pooled client instead, so concurrent publishers never
wait for each other. After a fork the child opens a connection of its own.
Connection errors are retried once on a fresh connection, as the pooled client's
``Retry(retries=1)`` does; callers are built for a re-sent command (see the fetch
script's lost-reply handling).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

__all__ = ["Line"]

_RETRIED = (redis.ConnectionError, redis.TimeoutError)


class Line:
    """One connection, used by one thread at a time; see the module docstring."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()

    def acquire(self) -> bool:
        """Take the line for this thread; False while another thread has it."""
        return self._lock.acquire(blocking=False)

    def release(self) -> None:
        self._lock.release()

    @contextmanager
    def take(self) -> Iterator[Line | None]:
        """The line for this thread, or None while another thread uses it."""
        if not self.acquire():
            yield None
            return
        try:
            yield self
        finally:
            self.release()

    def run(self, *args: Any, retry_timeouts: bool = True) -> Any:
        """One command on the line, or through the client's pool while another
        thread has the line. ``retry_timeouts=False``: a reply that timed out is not
        sent again on the line (the command may have run: a publish would be queued
        twice); the pool's own retry still applies when the line is busy."""
        with self.take() as line:
            if line is not None:
                return line.call(*args, retry_timeouts=retry_timeouts)
        execute: Callable[..., Any] = self._client.execute_command  # untyped in redis-py
        return execute(*args)

    def call(self, *args: Any, retry_timeouts: bool = True) -> Any:
        """Send one command and return its reply (an error reply raises)."""
        return self.call_many([args], raise_on_error=True, retry_timeouts=retry_timeouts)[0]

    def call_many(
        self,
        commands: Sequence[Sequence[Any]],
        *,
        raise_on_error: bool = False,
        retry_timeouts: bool = True,
    ) -> list[Any]:
        """Send ``commands`` in one write and read every reply, in order. An error
        reply is returned as its exception unless ``raise_on_error``. A connection
        error is retried once on a new connection, and so is a timeout unless
        ``retry_timeouts`` is False."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                _send(conn, commands)
                return _receive(conn, len(commands), raise_on_error)
            except _RETRIED as exc:
                conn.disconnect()
                if attempt == 2 or (not retry_timeouts and isinstance(exc, redis.TimeoutError)):
                    raise
        raise AssertionError("unreachable")

    def send(self, commands: Sequence[Sequence[Any]]) -> None:
        """Write ``commands`` without reading the replies (see ``receive``); no retry."""
        _send(self._connection(), commands)

    def receive(self, count: int) -> list[Any]:
        """Read the replies of the last ``send``; error replies come back as values."""
        return _receive(self._connection(), count, raise_on_error=False)

    def _connection(self) -> Any:
        if self._pid != os.getpid():  # forked: the parent's socket is not ours
            self._conn, self._pid = None, os.getpid()
        if self._conn is None:
            pool = self._pool
            self._conn = pool.connection_class(**pool.connection_kwargs)
        return self._conn

    def close(self) -> None:
        """Close the connection (a later call opens a new one). A call in progress on
        another thread fails over to a new connection, as after a dropped one."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.disconnect()
        self._conn = None


def _send(conn: Any, commands: Sequence[Sequence[Any]]) -> None:
    if len(commands) == 1:
        conn.send_packed_command(conn.pack_command(*commands[0]), check_health=False)
    else:
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)


def _receive(conn: Any, count: int, raise_on_error: bool) -> list[Any]:
    replies: list[Any] = []
    error: redis.ResponseError | None = None
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:  # read in full: the next replies follow
            error = error or exc
            replies.append(exc)
    if error is not None and raise_on_error:
        raise error
    return replies
