"""Throughput and failures per minute over the last hour, for the overview's charts.

Sixty one-minute buckets, whatever the load: recording a finished task adds one
to a counter, so memory stays flat. A bucket is keyed by the minute the event
was received here (the receiver's clock, not the sender's).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

MINUTES = 60


@dataclass(frozen=True)
class Minute:
    """One minute of the chart: its start (unix time), tasks done, tasks failed."""

    start: float
    done: int
    failed: int


class History:
    """Tasks done (succeeded or failed) and failed, per minute, for ``MINUTES`` minutes."""

    def __init__(self, minutes: int = MINUTES) -> None:
        self.minutes = minutes
        self._done = [0] * minutes
        self._failed = [0] * minutes
        self._stamp = [-1] * minutes  # which minute each slot holds now
        self._lock = threading.Lock()

    def record(self, failed: bool, when: float | None = None) -> None:
        """Count one finished task at ``when`` (default: now)."""
        minute = int((when or time.time()) // 60)
        slot = minute % self.minutes
        with self._lock:
            if self._stamp[slot] != minute:
                self._stamp[slot], self._done[slot], self._failed[slot] = minute, 0, 0
            self._done[slot] += 1
            self._failed[slot] += int(failed)

    def series(self, now: float | None = None) -> list[Minute]:
        """The last ``minutes`` minutes, oldest first; minutes with nothing are zeros."""
        current = int((now or time.time()) // 60)
        out = []
        with self._lock:
            for minute in range(current - self.minutes + 1, current + 1):
                slot = minute % self.minutes
                fresh = self._stamp[slot] == minute
                done = self._done[slot] if fresh else 0
                failed = self._failed[slot] if fresh else 0
                out.append(Minute(minute * 60.0, done, failed))
        return out
