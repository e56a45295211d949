"""``threads``: up to N tasks at once on a pool of daemon threads."""

from __future__ import annotations

import collections
import threading

from taskq.worker.executor import Executor
from taskq.worker.pools.base import Done, QueuedPool, cannot_terminate, run_here
from taskq.worker.request import Request


class ThreadPool(QueuedPool):
    """N daemon threads taking requests from a local FIFO."""

    def __init__(self, concurrency: int, executor: Executor, done: Done) -> None:
        self.concurrency = concurrency
        self._executor = executor
        self._done = done
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: set[Request] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._excess = 0  # threads to end (the pool shrank)
        self._threads: list[threading.Thread] = []

    def describe(self) -> str:
        return f"{self.concurrency} (threads)"

    def start(self) -> None:
        self._add_threads(self.concurrency)

    def _add_threads(self, count: int) -> None:
        for _ in range(count):
            name = f"taskq-pool-{len(self._threads)}"
            thread = threading.Thread(target=self._loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def resize(self, delta: int) -> int:
        """Start ``delta`` more threads, or let ``-delta`` of them end after their task."""
        with self._cond:
            size = max(1, self.concurrency + delta)
            grow, self.concurrency = size - self.concurrency, size
            if grow < 0:
                self._excess -= grow
                self._cond.notify_all()
        if grow > 0:
            self._add_threads(grow)
        return size

    def submit(self, request: Request) -> None:
        with self._cond:
            self._waiting.append(request)
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped and not self._excess:
                    self._cond.wait()
                if self._stopped:
                    return
                if self._excess:  # the pool shrank: this thread ends
                    self._excess -= 1
                    return
                request = self._waiting.popleft()
                self._running.add(request)
            try:
                run_here(self._executor, request, self._done)
            finally:
                with self._cond:
                    self._running.discard(request)
                    self._cond.notify_all()

    def terminate(self, task_id: str, signum: int) -> bool:
        return cannot_terminate("threads", task_id, self.running())

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
