"""Acknowledgements that wait, briefly, to share a round trip with the next fetch.

A worker acks every message it ran. Sent one by one, those acks are a round trip
each, as many as the tasks themselves. ``PendingAcks`` holds them instead (from any
thread) until the consumer's next fetch takes them along, and a flusher thread
sends whatever waited ``delay`` seconds, so an ack is never held longer than that
plus one round trip, however long the next task runs or the consumer blocks.

Holding an ack is safe under at-least-once: the message stays leased to this live
consumer meanwhile, and a lease of a live consumer never runs out. Only a crash in
the window runs the task again, exactly as a crash just before an unbatched ack
would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from taskq.errors import BrokerError

__all__ = ["Held", "PendingAcks"]

logger = logging.getLogger("taskq.broker.redis")

#: Seconds the flusher waits before retrying after a failed flush.
RETRY_PAUSE = 1.0

#: What ``PendingAcks.take`` hands over: tags, delivery-counter fields, and the
#: monotonic time the oldest of them was held.
Held = tuple[list[str], list[str], float]


class PendingAcks:
    """A thread-safe buffer of acknowledgements with a deadline.

    Args:
        send: sends ``(tags, counter fields)``; raises ``BrokerError`` when it
            could not (the entries are then held again and retried).
        delay: longest an entry waits before the flusher sends it (seconds).
        limit: entries at which ``add`` asks its caller to send at once.
    """

    def __init__(
        self, send: Callable[[list[str], list[str]], None], delay: float, limit: int = 1000
    ) -> None:
        self.delay = delay
        self.limit = limit
        self._send = send
        self._tags: list[str] = []
        self._counters: list[str] = []
        self._since = 0.0
        self._retry_at = 0.0
        self._cond = threading.Condition(threading.Lock())
        self._flusher: threading.Thread | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._tags)

    def add(self, tags: list[str], counters: list[str]) -> bool:
        """Hold acknowledgements; True when ``limit`` is reached and the caller
        should ``flush`` now."""
        with self._cond:
            if not self._tags:
                self._since = time.monotonic()
            self._tags += tags
            self._counters += counters
            if self._flusher is None and not self._closed:
                self._flusher = threading.Thread(
                    target=self._run, name="taskq-redis-acks", daemon=True
                )
                self._flusher.start()
            return len(self._tags) >= self.limit

    def take(self) -> Held:
        """Everything held, which the caller now sends (or hands back with ``put_back``)."""
        with self._cond:
            held = (self._tags, self._counters, self._since)
            self._tags, self._counters = [], []
            return held

    def put_back(self, held: Held) -> None:
        """Hold again what ``take`` returned and could not be sent."""
        tags, counters, since = held
        if not tags and not counters:
            return
        with self._cond:
            self._since = min(since, self._since) if self._tags else since
            self._tags += tags
            self._counters += counters

    def flush(self) -> int:
        """Send everything held now; return how many acks went out.

        Raises:
            BrokerError: they could not be sent (they are held again).
        """
        held = self.take()
        if not held[0]:
            return 0
        try:
            self._send(held[0], held[1])
        except BaseException:
            self.put_back(held)
            raise
        return len(held[0])

    def close(self) -> None:
        """Stop the flusher thread (the caller flushes what is left)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(5.0)

    def _run(self) -> None:
        failing = False
        while self._wait_due():
            try:
                self.flush()
            except BrokerError as exc:
                if not failing:
                    logger.warning("Could not send acknowledgements (retrying): %s", exc)
                failing = True
                self._retry_at = time.monotonic() + RETRY_PAUSE
            else:
                failing = False

    def _wait_due(self) -> bool:
        """Wait until the oldest entry has waited ``delay``; False once closed.

        With nothing held it looks again every ``delay``: ``add`` does not wake it,
        since a notify on every batch costs the acking thread more than these naps.
        """
        with self._cond:
            while not self._closed:
                if not self._tags:
                    self._cond.wait(self.delay)
                    continue
                wait = max(self._since + self.delay, self._retry_at) - time.monotonic()
                if wait <= 0:
                    return True
                self._cond.wait(wait)
            return False
