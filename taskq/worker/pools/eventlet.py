"""The eventlet pool: ``-P eventlet``, thousands of I/O-bound tasks in one process.

Needs ``pip install 'taskq[eventlet]'`` and a process patched by
``eventlet.monkey_patch()`` before anything else is imported, which
``taskq worker -P eventlet`` does (``taskq.monkey``). What it promises is in
``taskq.worker.pools.green``. Eventlet itself is in maintenance mode and discourages new
use (docs/worker.md); prefer the gevent or asyncio pool for new code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskq.worker.pools.green import GreenPool, require

if TYPE_CHECKING:
    from taskq.worker.executor import Executor
    from taskq.worker.pools.base import Done


class EventletPool(GreenPool):
    """Tasks in eventlet green threads; see ``taskq.worker.pools.green``."""

    kind = "eventlet"

    def __init__(self, concurrency: int, executor: Executor, done: Done) -> None:
        require("eventlet", "eventlet")
        import eventlet
        import eventlet.hubs

        super().__init__(concurrency, executor, done)
        self._eventlet = eventlet
        self._hubs = eventlet.hubs

    def _spawn(self, fn: Callable[..., None], *args: Any) -> Any:
        return self._eventlet.spawn(fn, *args)

    def _current(self) -> Any:
        return self._eventlet.getcurrent()

    def _timeout(self, seconds: float, exc: BaseException) -> Any:
        return self._eventlet.Timeout(seconds, exc)

    def _cancel(self, timer: Any) -> None:
        timer.cancel()

    def _soon(self, fn: Callable[[], None]) -> None:
        self._hubs.get_hub().schedule_call_global(0, fn)

    def _kill_all(self, greenlets: list[Any], exc: BaseException, timeout: float) -> None:
        for greenlet in greenlets:
            greenlet.kill(exc)
        with self._eventlet.Timeout(timeout, False):
            for greenlet in greenlets:
                greenlet.wait()
