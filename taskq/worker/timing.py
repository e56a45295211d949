"""The worker's clock and intervals, handed in so tests can shorten or drive them.

``Timing`` holds every interval the worker waits on; the defaults are what a
production worker uses. ``Clock`` gives the wall-clock time (ETAs are unix times)
and a monotonic time (rate limits, deadlines); ``SYSTEM_CLOCK`` reads the system's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "Timing"]


class Clock(Protocol):
    """Where the worker reads the time."""

    def time(self) -> float:
        """Seconds since the epoch (ETAs and expiries are compared with it)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go back."""
        ...


class _SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = _SystemClock()


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long the worker waits for what.

    Attributes:
        fetch_timeout: longest a fetch blocks, so a stop is noticed this fast. The
            brokers poll about this often when idle anyway (Redis: ``poll_interval``).
        burst_fetch_timeout: the same in burst mode (``run(burst=True)``), where an
            empty fetch may end the run.
        control_interval: seconds between looks at the result backend for running
            tasks revoked with ``terminate=True``.
        heartbeat_interval: seconds between lease renewals; None means a third of
            ``worker_lease_timeout``.
        batch_span, batch_max: under a backlog of short tasks the worker leases past
            its prefetch window: as many messages as it settled in the last
            ``batch_span`` seconds, up to ``batch_max`` (see ``Window``).
    """

    fetch_timeout: float = 0.25
    burst_fetch_timeout: float = 0.05
    control_interval: float = 1.0
    heartbeat_interval: float | None = None
    batch_span: float = 0.02
    batch_max: int = 64
