"""How many messages the worker may lease now: the prefetch window and its counters.

The window is ``concurrency x worker_prefetch_multiplier`` messages leased and not
yet settled. Under a backlog of short tasks it grows: as many as this worker
settled in the last ``Timing.batch_span`` seconds, at most ``Timing.batch_max``
(see ``resize``); the broker may then also read the next batch ahead, so a worker
holds at most about two batch spans of its work. Tasks of a few milliseconds or
more keep the prefetch window; no-op tasks lease 64 at a time. A multiplier of 1
(Celery's "hold no more than I run") turns batching off.

The consumer thread asks ``free`` and waits in ``wait``; pools report each settled
message from their own threads (``settled``), which wakes the consumer only once
it may fetch again.
"""

from __future__ import annotations

import threading

from taskq.worker.timing import Clock, Timing

__all__ = ["Window"]


class Window:
    """Counters shared by the consumer (leasing) and the settlement (settling).

    Args:
        capacity: the prefetch window (concurrency x multiplier).
        concurrency: how many tasks the pool runs at once.
        batching: False when the multiplier is 1: never lease past ``capacity``.
    """

    def __init__(
        self, capacity: int, concurrency: int, batching: bool, timing: Timing, clock: Clock
    ) -> None:
        self.capacity = capacity
        self.concurrency = concurrency
        self._multiplier = max(1, capacity // max(1, concurrency))
        self._batching = batching
        self._timing = timing
        self._clock = clock
        self.size = capacity  # what may be leased now (see resize)
        self._backlog = False  # the last fetch got all it asked for
        self._in_flight = 0
        self._settled = 0
        self._rate_mark = (clock.monotonic(), 0)
        self._lock = threading.Lock()
        self._slot = threading.Event()

    @property
    def read_ahead(self) -> bool:
        """Past the prefetch window: short tasks under a backlog (``Broker.fetch``)."""
        return self.size > self.capacity

    def free(self, parked: int) -> int:
        """How many more messages to lease now (0: wait for a slot). ``parked``
        (rate-limited) requests count only beyond ``capacity`` of them, so they never
        starve other tasks of the prefetch. While the queues have a backlog (the last
        fetch was full) and every pool slot has work, wait until half the window is
        free, so leases come in batches rather than one per finished task."""
        with self._lock:
            return self._free(parked)

    def _free(self, parked: int) -> int:
        size = self.size
        free = size - self._in_flight - max(0, parked - self.capacity)
        busy = self._in_flight >= self.concurrency
        if self._backlog and busy and free < max(1, size // 2):
            return 0
        return free

    def fetched(self, got: int, asked: int) -> None:
        """A fetch returned ``got`` of ``asked`` messages."""
        self._backlog = got >= asked
        self.resize()

    def resize(self) -> None:
        """Size the window for the next fetches from the recent settle rate."""
        now = self._clock.monotonic()
        since, settled = self._rate_mark
        if now - since < 0.1:
            return
        rate = (self._settled - settled) / (now - since)
        self._rate_mark = (now, self._settled)
        batch = int(rate * self._timing.batch_span) if self._batching and self._backlog else 0
        self.size = max(self.capacity, min(self._timing.batch_max, batch))

    def set_concurrency(self, concurrency: int) -> None:
        """The pool grew or shrank to ``concurrency``: the window follows, with the
        same prefetch multiplier (remote control's ``pool_grow`` / ``pool_shrink``)."""
        with self._lock:
            self.concurrency = concurrency
            self.capacity = self.size = max(1, concurrency * self._multiplier)
        self.wake()

    def started(self) -> None:
        """A request went to the pool."""
        with self._lock:
            self._in_flight += 1

    def settled(self, parked: int) -> None:
        """A request the pool ran (or could not) was settled: wake the consumer only
        once it may fetch (see ``free``), not a thread switch per finished task."""
        with self._lock:
            self._in_flight -= 1
            self._settled += 1
            wake = self._free(parked) > 0
        if wake and not self._slot.is_set():  # set: the consumer will look anyway
            self._slot.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def wait(self, timeout: float) -> None:
        """Wait until a slot may be free, ``wake`` is called, or ``timeout`` passes."""
        self._slot.wait(timeout)
        self._slot.clear()

    def wake(self) -> None:
        self._slot.set()
