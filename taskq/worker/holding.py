"""The holding area: requests the worker keeps before they may start.

Two kinds wait here, each in a heap by the time it may start:

* messages that arrived before their ETA (sent by a producer that did not use the
  broker's delayed store, Celery's for one) on a broker that cannot take them back
  into a delayed store, by unix time;
* rate-limited requests waiting for their token (``RateLimiter``), by monotonic
  time. Parking one delays only its own kind: the others go on.

Owned by the consumer thread; not thread-safe, except for the copies remote
control reads (``held_requests``, ``parked_requests``).
"""

from __future__ import annotations

import heapq
import itertools

from taskq.worker.policy import Policies
from taskq.worker.ratelimit import RateLimiter
from taskq.worker.request import Request
from taskq.worker.timing import Clock

__all__ = ["Holding"]


class Holding:
    """ETA-held and rate-limited requests; see the module docstring."""

    def __init__(self, policies: Policies, clock: Clock) -> None:
        self._policies = policies
        self._clock = clock
        self._held: list[tuple[float, int, Request]] = []  # by ETA (unix time)
        self._parked: list[tuple[float, int, Request]] = []  # by token time (monotonic)
        self._limiter = RateLimiter(clock.monotonic)
        self._seq = itertools.count()

    @property
    def held(self) -> int:
        """ETA messages waiting in this worker's memory."""
        return len(self._held)

    @property
    def parked(self) -> int:
        """Rate-limited requests waiting for their token."""
        return len(self._parked)

    def held_requests(self) -> list[Request]:
        """The ETA-held requests, soonest first (a copy: safe from another thread)."""
        return [item[2] for item in sorted(self._held[:])]

    def parked_requests(self) -> list[Request]:
        """The rate-limited requests, soonest first (a copy: safe from another thread)."""
        return [item[2] for item in sorted(self._parked[:])]

    def __bool__(self) -> bool:
        return bool(self._held or self._parked)

    def hold(self, request: Request, eta: float) -> None:
        """Keep ``request`` until unix time ``eta``; ``release`` returns it then."""
        heapq.heappush(self._held, (eta, next(self._seq), request))

    def admit(self, request: Request) -> bool:
        """True when ``request`` may start now; else it is parked until its rate
        limit's next token and ``release`` returns it then."""
        rate = self._policies[request.name].rate
        if rate:
            wait = self._limiter.reserve(request.name, rate)
            if wait > 0:
                at = self._clock.monotonic() + wait
                heapq.heappush(self._parked, (at, next(self._seq), request))
                return False
        return True

    def release(self) -> list[Request]:
        """The requests that may start now: parked ones whose token is due, then held
        ones whose ETA passed and whose rate limit (if any) lets them start."""
        ready = []
        clock = self._clock.monotonic()
        while self._parked and self._parked[0][0] <= clock:
            ready.append(heapq.heappop(self._parked)[2])
        now = self._clock.time()
        while self._held and self._held[0][0] <= now:
            request = heapq.heappop(self._held)[2]
            if self.admit(request):
                ready.append(request)
        return ready

    def wait_at_most(self, timeout: float) -> float:
        """``timeout``, or less when something here becomes due sooner."""
        if self._held:
            timeout = min(timeout, max(0.0, self._held[0][0] - self._clock.time()))
        if self._parked:
            timeout = min(timeout, max(0.0, self._parked[0][0] - self._clock.monotonic()))
        return timeout

    def take_all(self) -> list[Request]:
        """Remove and return everything held and parked (for shutdown)."""
        taken = [item[2] for item in self._held + self._parked]
        self._held.clear()
        self._parked.clear()
        return taken
