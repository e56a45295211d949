"""Renewing the worker's lease from a thread of the OS, in a gevent or eventlet process.

Once a process is monkey-patched, ``threading.Thread`` starts a greenlet, and a
greenlet runs only when the running task yields. The worker's heartbeat would then
wait behind a task that computes, or sits in a C call, and after
``worker_lease_timeout`` the broker would hand this live worker's messages to
another worker. ``LeaseKeeper`` renews the lease from a real thread (the standard
``_thread`` as it was before patching) on a connection of its own
(``Broker.lease_renewer``): Python switches threads every few milliseconds even
while a task never yields, so the renewal goes out on time. A C call that holds
the GIL for longer than the lease (rare: most release it while they wait) stops it,
as it stops every thread of the process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from taskq import monkey
from taskq.errors import BrokerError

if TYPE_CHECKING:
    from taskq.broker.base import Broker

log = logging.getLogger("taskq.worker")


class LeaseKeeper:
    """Calls ``broker.lease_renewer().renew()`` every ``interval`` seconds from a
    thread of the OS until ``stop``."""

    def __init__(self, broker: Broker, interval: float) -> None:
        self._broker = broker
        self._interval = interval
        start, allocate = monkey.original_thread()
        self._start_thread = start
        # Native locks used as events: a patched threading.Event would wait on
        # this thread's own event loop, which nothing else drives.
        self._stop: Any = allocate()
        self._stopped: Any = allocate()

    def start(self) -> None:
        self._stop.acquire()
        self._stopped.acquire()
        self._start_thread(self._run, ())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing; wait up to ``timeout`` for a renewal under way to end."""
        self._stop.release()
        self._stopped.acquire(True, timeout)

    def _run(self) -> None:
        renewer = self._broker.lease_renewer()
        try:
            while not self._stop.acquire(True, self._interval):
                try:
                    renewer.renew()
                except BrokerError as exc:
                    log.warning("Lease renewal failed: %s", exc)
        finally:
            try:
                renewer.close()
            finally:
                self._stopped.release()
