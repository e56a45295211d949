"""Results the worker holds briefly, to write a batch of them in one call.

A task's SUCCESS is written to the result backend before its message is acked
(a crash in between runs the task again: the result is never lost). Written one
by one, that is a round trip and a few Redis commands a task: most of the cost of
a drain with results on. ``HeldResults`` holds encoded results instead, and the
acks of the requests that finish after them, and ``flush`` writes the results in
one call (``Backend.store_ready_many``: one script call on Redis, one transaction
in SQL) and only then acks. So a message is acked only after every result held
before it was stored, whichever thread flushes.

When a flush happens:

- A *holding* thread (the consumer's, which runs each task itself in the solo
  pool: ``hold_here``) adds without flushing; it flushes before it fetches again
  or waits, so a batch of messages is settled in one write.
- Any other thread (a pool's) flushes at once when no other task of the worker is
  running, unless a flush is under way, whose thread then takes what was added
  meanwhile (group commit: a write carries what queued up during the previous one).
  While other tasks run, their results join the batch.
- A flusher thread writes what waited ``delay`` seconds, so a long task run by a
  holding thread does not hold back the results of the tasks before it.

Only plain results are held (``Executor.record``): a workflow step (chain, chord,
callbacks) is written at once, since what runs next may read it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from taskq.errors import BackendError

if TYPE_CHECKING:
    from taskq.backends.base import Backend
    from taskq.worker.request import Request

__all__ = ["HeldResults"]

log = logging.getLogger("taskq.worker")

#: Longest a result waits to be written with others (seconds).
DELAY = 0.005
#: Results held at which the adding thread writes them even when it holds.
LIMIT = 500


class HeldResults:
    """Encoded results and the acks that must follow them; see the module doc.

    Args:
        backend: where the results go.
        delay: longest a result is held (seconds).
        limit: results held at which even a holding thread flushes.
    """

    def __init__(self, backend: Backend, delay: float = DELAY, limit: int = LIMIT) -> None:
        self.backend = backend
        self.delay = delay
        self.limit = limit
        self._items: list[tuple[str, bytes]] = []
        self._acks: list[Request] = []
        self._since = 0.0  # monotonic: when the oldest held item was added
        self._busy = False  # a thread is flushing
        self._holders: set[int] = set()
        self._cond = threading.Condition(threading.Lock())
        self._flusher: threading.Thread | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def waiting_acks(self) -> int:
        """Acks waiting for a flush."""
        return len(self._acks)

    def hold_here(self) -> None:
        """Results added by the calling thread wait for its ``flush`` (or ``delay``)."""
        self._holders.add(threading.get_ident())

    def add(self, key: str, data: bytes) -> None:
        """Hold one encoded ready state (``key``: ``task_key(id)``)."""
        with self._cond:
            if not self._items:
                self._since = time.monotonic()
                if self._flusher is None and not self._closed:
                    self._flusher = threading.Thread(
                        target=self._run, name="taskq-results", daemon=True
                    )
                    self._flusher.start()
                else:
                    self._cond.notify()
            self._items.append((key, data))

    def ack_after(self, request: Request, others_running: bool = False) -> bool:
        """Ack ``request`` once the results held now are written: True when it was
        taken (``flush`` acks it); False when nothing is held and the caller acks.

        A thread that does not hold flushes now, unless ``others_running``: other
        tasks of this worker are running, whose results may go in the same write
        (the flusher writes within ``delay`` anyway)."""
        with self._cond:
            if not self._items and not self._busy and not self._acks:
                return False
            self._acks.append(request)
            full = len(self._items) >= self.limit
        if full or not (others_running or threading.get_ident() in self._holders):
            self.flush()
        return True

    def flush(self) -> None:
        """Write what is held, then ack what waited for it. Returns at once when another
        thread is flushing: that thread takes what was added meanwhile."""
        with self._cond:
            if self._busy:
                return
            self._busy = True
        try:
            while True:
                with self._cond:
                    items, acks = self._items, self._acks
                    if not items and not acks:
                        break
                    self._items, self._acks = [], []
                self._write(items)
                for request in acks:
                    try:
                        request.ack()
                    except Exception:
                        log.exception("Could not ack %r; its lease will return it", request)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is held (waiting for a flush under way) and stop the flusher."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(0.1)
        self.flush()

    def _write(self, items: list[tuple[str, bytes]]) -> None:
        if not items:
            return
        try:
            self.backend.store_ready_many(items)
        except BackendError as exc:
            # As a result written on its own: logged, and its message acked anyway.
            log.error("Could not store %d result(s): %s", len(items), exc)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if not self._items or self._busy:  # a flush under way takes them
                        self._cond.wait()
                        continue
                    wait = self._since + self.delay - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    self._flusher = None
                    return
            self.flush()
