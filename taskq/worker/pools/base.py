"""What every pool shares: the ``Pool`` contract, its settings, and the queue
bookkeeping of pools that keep waiting requests in a local FIFO."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable, Collection
from typing import Protocol

from taskq.worker.executor import Action, Executor, Outcome, internal_error
from taskq.worker.request import Request

log = logging.getLogger("taskq.worker")

#: Called by a pool when a request is done, with what to do with its message.
Done = Callable[[Request, Outcome], None]


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


def run_here(executor: Executor, request: Request, done: Done) -> None:
    """Execute in this thread and report the outcome (solo and threads pools)."""
    try:
        if not request.may_run():
            done(request, Outcome(Action.GONE))
            return
        request.started()
        outcome = executor.execute(request.context())
    except Exception as exc:
        outcome = internal_error(request, exc)
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

    def waiting(self) -> list[Request]:
        """The requests submitted and not started yet."""

    def resize(self, delta: int) -> int:
        """Grow or shrink by ``delta`` slots; the new size.

        Raises:
            ValueError: this pool cannot be resized (the message says why).
        """

    def set_task_events(self, enabled: bool) -> None:
        """Task events were turned on or off (a pool running tasks in other processes
        tells them to report what events need)."""

    def join(self, timeout: float) -> bool:
        """Wait until nothing runs; False if ``timeout`` passed first."""

    def terminate(self, task_id: str, signum: int) -> bool:
        """Stop the running task ``task_id`` with ``signum``; False when it is not
        running here or this pool cannot stop a running task."""

    def stop(self) -> None: ...


#: Makes a pool from the worker's parts (``Worker(supervised=...)``).
PoolMaker = Callable[[PoolSettings, Executor, Done], "Pool"]


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

    def waiting(self) -> list[Request]:
        with self._cond:
            return list(self._waiting)

    def set_task_events(self, enabled: bool) -> None:
        pass  # tasks run in this process: the worker sees their outcomes itself

    def join(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and not self._waiting, timeout)


def cannot_terminate(pool: str, task_id: str, running: list[Request]) -> bool:
    if any(r.id == task_id for r in running):
        log.warning(
            "Task %s was revoked with terminate=True, but the %s pool cannot stop a "
            "running task; it runs to the end (use the prefork or asyncio pool)",
            task_id,
            pool,
        )
    return False
