"""Execution pools: where task code runs.

``solo`` runs each task in the consumer's thread, one at a time. ``threads`` runs
up to N at once in a thread pool. ``prefork`` (``taskq.worker.prefork``) runs them
in child processes and ``asyncio`` (``taskq.worker.aio``) on one event loop. All
expose the same small interface, so the worker does not care which it drives.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from taskq.worker.executor import REQUEUE, Outcome, execute
from taskq.worker.request import Request

if TYPE_CHECKING:
    from taskq.app import App

log = logging.getLogger("taskq.worker")

#: Called by a pool when a request is done, with what to do with its message.
Done = Callable[[Request, Outcome], None]


#: The pools ``make_pool`` knows.
POOLS = ("prefork", "threads", "solo", "asyncio")


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """How big a pool is and when a prefork child is replaced.

    Attributes:
        concurrency: how many tasks run at once (the maximum with ``autoscale``).
        max_tasks_per_child: prefork: replace a child after this many tasks.
        max_memory_per_child: prefork: replace a child whose resident memory
            passed this many KiB after a task.
        autoscale: prefork: ``(max, min)`` children; the pool grows while
            requests wait and shrinks when idle.
    """

    concurrency: int
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    autoscale: tuple[int, int] | None = None


def run_here(app: App, request: Request, done: Done) -> None:
    """Execute in this thread and report the outcome (solo and threads pools)."""
    try:
        request.started()
        outcome = execute(app, request.context())
    except Exception:
        log.exception("Internal error running %r; giving it back", request)
        outcome = Outcome(REQUEUE)
    done(request, outcome)


class Pool(Protocol):
    """What the worker needs from a pool. ``done`` (given at construction) is called
    exactly once for every submitted request that started, unless ``stop`` came
    first."""

    concurrency: int

    def describe(self) -> str:
        """The size and kind, for the banner: ``"4 (prefork)"``."""

    def start(self) -> None: ...

    def submit(self, request: Request) -> None:
        """Run ``request`` now or as soon as a slot frees."""

    def take_unstarted(self) -> list[Request]:
        """Remove and return the requests that have not started (for shutdown)."""

    def running(self) -> list[Request]: ...

    def join(self, timeout: float) -> bool:
        """Wait until nothing runs; False if ``timeout`` passed first."""

    def terminate(self, task_id: str, signum: int) -> bool:
        """Stop the running task ``task_id`` with ``signum``; False when it is not
        running here or this pool cannot stop a running task."""

    def stop(self) -> None: ...


class SoloPool:
    """Runs each request inline, in the thread that submits it."""

    def __init__(self, app: App, done: Done) -> None:
        self.concurrency = 1
        self._app = app
        self._done = done
        self._current: Request | None = None

    def describe(self) -> str:
        return "1 (solo)"

    def start(self) -> None:
        pass

    def submit(self, request: Request) -> None:
        self._current = request
        try:
            run_here(self._app, request, self._done)
        finally:
            self._current = None

    def take_unstarted(self) -> list[Request]:
        return []

    def running(self) -> list[Request]:
        return [self._current] if self._current else []

    def join(self, timeout: float) -> bool:
        return self._current is None

    def terminate(self, task_id: str, signum: int) -> bool:
        return _cannot_terminate("solo", task_id, self.running())

    def stop(self) -> None:
        pass


class QueuedPool:
    """Bookkeeping for pools that keep waiting requests in a local FIFO and the
    running ones in a collection, both guarded by one condition."""

    _waiting: collections.deque[Request]
    _running: Collection[Request]
    _cond: threading.Condition

    def take_unstarted(self) -> list[Request]:
        with self._cond:
            taken = list(self._waiting)
            self._waiting.clear()
            return taken

    def running(self) -> list[Request]:
        with self._cond:
            return list(self._running)

    def join(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and not self._waiting, timeout)


class ThreadPool(QueuedPool):
    """N daemon threads taking requests from a local FIFO."""

    def __init__(self, concurrency: int, app: App, done: Done) -> None:
        self.concurrency = concurrency
        self._app = app
        self._done = done
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: set[Request] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def describe(self) -> str:
        return f"{self.concurrency} (threads)"

    def start(self) -> None:
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"taskq-pool-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, request: Request) -> None:
        with self._cond:
            self._waiting.append(request)
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                request = self._waiting.popleft()
                self._running.add(request)
            try:
                run_here(self._app, request, self._done)
            finally:
                with self._cond:
                    self._running.discard(request)
                    self._cond.notify_all()

    def terminate(self, task_id: str, signum: int) -> bool:
        return _cannot_terminate("threads", task_id, self.running())

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


def _cannot_terminate(pool: str, task_id: str, running: list[Request]) -> bool:
    if any(r.id == task_id for r in running):
        log.warning(
            "Task %s was revoked with terminate=True, but the %s pool cannot stop a "
            "running task; it runs to the end (use the prefork or asyncio pool)",
            task_id,
            pool,
        )
    return False


def make_pool(name: str, settings: PoolSettings, app: App, done: Done) -> Pool:
    """The pool called ``name`` (one of ``POOLS``).

    Raises:
        ValueError: an unknown name.
    """
    if name == "solo":
        return SoloPool(app, done)
    if name == "threads":
        return ThreadPool(settings.concurrency, app, done)
    if name == "prefork":
        from taskq.worker.prefork import PreforkPool

        return PreforkPool(app, done, settings)
    if name == "asyncio":
        from taskq.worker.aio import AsyncioPool

        return AsyncioPool(settings.concurrency, app, done)
    raise ValueError(f"Unknown pool {name!r}; choose one of {', '.join(POOLS)}.")
