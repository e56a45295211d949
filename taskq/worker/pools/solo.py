"""``solo``: each task runs in the consumer's thread, one at a time."""

from __future__ import annotations

from taskq.worker.executor import Executor
from taskq.worker.pools.base import Done, cannot_terminate, run_here
from taskq.worker.request import Request


class SoloPool:
    """Runs each request inline, in the thread that submits it."""

    def __init__(self, executor: Executor, done: Done) -> None:
        self.concurrency = 1
        self._executor = executor
        self._done = done
        self._current: Request | None = None

    def describe(self) -> str:
        return "1 (solo)"

    def start(self) -> None:
        pass

    def submit(self, request: Request) -> None:
        self._current = request
        try:
            run_here(self._executor, request, self._done)
        finally:
            self._current = None

    def take_unstarted(self) -> list[Request]:
        return []

    def running(self) -> list[Request]:
        return [self._current] if self._current else []

    def waiting(self) -> list[Request]:
        return []

    def resize(self, delta: int) -> int:
        raise ValueError(
            "The solo pool runs one task at a time in the worker's own thread and cannot "
            "grow or shrink; use -P threads, prefork or asyncio."
        )

    def set_task_events(self, enabled: bool) -> None:
        pass

    def join(self, timeout: float) -> bool:
        return self._current is None

    def terminate(self, task_id: str, signum: int) -> bool:
        return cannot_terminate("solo", task_id, self.running())

    def stop(self) -> None:
        pass
