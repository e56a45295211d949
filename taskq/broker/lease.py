"""Whether a consumer's lease may have lapsed since it leased a message.

Lease-based brokers (Redis, SQLite) hand a consumer's messages back to their
queues when it stops renewing its lease for ``lease_timeout`` seconds. A worker
that was paused that long (SIGSTOP, a VM migration, a debugger) and resumes still
holds the messages it prefetched or read ahead, and other workers have already
run them again: it must not run them too (issue 12). ``LeaseClock`` notices that
cheaply: it records when each successful renewal was sent, and a message leased
before a gap of half the lease (heartbeats come every third), or held while the
current gap is that long, is in doubt: the broker then asks the server whether
it is still leased to this consumer before the worker runs it. Messages leased
under an unbroken chain of renewals cost one clock read.
"""

from __future__ import annotations

import math
import threading
import time

__all__ = ["LeaseClock"]


class LeaseClock:
    """Renewal times of one consumer's lease (monotonic seconds); thread-safe.

    Args:
        lease_timeout: the broker's lease, in seconds.
    """

    def __init__(self, lease_timeout: float) -> None:
        self._gap = lease_timeout / 2
        self._last = -math.inf  # the latest successful renewal, as sent
        self._lapse_end = -math.inf  # the renewal that ended the latest long gap
        self._lock = threading.Lock()

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` succeeded."""
        with self._lock:
            if sent_at - self._last > self._gap:
                self._lapse_end = max(self._lapse_end, sent_at)
            self._last = max(self._last, sent_at)

    def in_doubt(self, leased_at: float, now: float | None = None) -> bool:
        """True when the lease may have lapsed since ``leased_at`` (the send time of
        the call that leased the message) or may be lapsing now."""
        now = time.monotonic() if now is None else now
        return leased_at < self._lapse_end or now - self._last > self._gap
