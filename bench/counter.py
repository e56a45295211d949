"""The completion signal every framework's task body shares.

A task body calls ``done()`` (or ``started(sent)`` first, for latency trials). The
count is kept in the process and flushed with one pipelined INCRBY every
``FLUSH_EVERY`` seconds by a daemon thread, so signalling costs a lock and an
addition per task and never caps the figure being measured. The signal lives on
its own Redis server (``BENCH_SIGNAL_URL``), apart from the broker's, so INFO
commandstats on the broker server count only the framework's own commands.

Keys on the signal server:
    bench:done      int   tasks finished, all processes together
    bench:first     zset  pid -> time.time() the process started its first task
    bench:last      zset  pid -> time.time() the process finished its latest task
    bench:latency   list  seconds from the producer's send to the task's start
    bench:inflight  zset  pid -> most tasks between ``enter()`` and ``leave()`` at once

Works in forked children (prefork pools): each process starts its own flusher
on its first task.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

import redis

FLUSH_EVERY = 0.005
DONE, FIRST, LAST, LATENCY = "bench:done", "bench:first", "bench:last", "bench:latency"
INFLIGHT = "bench:inflight"


class _Signal:
    def __init__(self) -> None:
        self._pid = -1
        self._lock = threading.Lock()
        self._pending = 0
        self._last = 0.0
        self._inflight = self._peak = self._flushed_peak = 0
        self._client: redis.Redis | None = None

    def _begin(self) -> None:
        """First task in this process (or the first after a fork)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pending = 0
        self._client = redis.Redis.from_url(os.environ["BENCH_SIGNAL_URL"])
        self._client.zadd(FIRST, {str(self._pid): time.time()}, nx=True)
        threading.Thread(target=self._flush_loop, name="bench-signal", daemon=True).start()
        atexit.register(self.flush)

    def done(self) -> None:
        if self._pid != os.getpid():
            self._begin()
        with self._lock:
            self._pending += 1
            self._last = time.time()

    def enter(self) -> None:
        """A task begins its wait (W7): counts how many wait at once."""
        if self._pid != os.getpid():
            self._begin()
        with self._lock:
            self._inflight += 1
            self._peak = max(self._peak, self._inflight)

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1

    def started(self, sent: float) -> None:
        delay = time.time() - sent
        if self._pid != os.getpid():
            self._begin()
        assert self._client is not None
        self._client.rpush(LATENCY, delay)

    def flush(self) -> None:
        with self._lock:
            count, last, self._pending = self._pending, self._last, 0
            peak = self._peak if self._peak > self._flushed_peak else 0
            self._flushed_peak = max(self._flushed_peak, peak)
        if peak and self._client is not None:
            self._client.zadd(INFLIGHT, {str(self._pid): peak}, gt=True)
        if count and self._client is not None:
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(LAST, {str(self._pid): last}, gt=True)
            pipe.incrby(DONE, count)  # after LAST, so a reader that sees N sees the end time
            pipe.execute()

    def _flush_loop(self) -> None:
        pid = self._pid
        while pid == os.getpid():
            time.sleep(FLUSH_EVERY)
            try:
                self.flush()
            except redis.RedisError:
                time.sleep(0.5)  # the bench stops the signal server last; only at teardown


_signal = _Signal()
done = _signal.done
started = _signal.started
enter = _signal.enter
leave = _signal.leave
