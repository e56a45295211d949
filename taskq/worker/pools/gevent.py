"""The gevent pool: ``-P gevent``, thousands of I/O-bound tasks in one process.

Needs ``pip install 'taskq[gevent]'`` and a process patched by
``gevent.monkey.patch_all()`` before anything else is imported, which
``taskq worker -P gevent`` does (``taskq.monkey``). What it promises is in
``taskq.worker.pools.green``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskq.worker.pools.green import GreenPool, require

if TYPE_CHECKING:
    from taskq.worker.executor import Executor
    from taskq.worker.pools.base import Done


class GeventPool(GreenPool):
    """Tasks in gevent greenlets; see ``taskq.worker.pools.green``."""

    kind = "gevent"

    def __init__(self, concurrency: int, executor: Executor, done: Done) -> None:
        require("gevent", "gevent")
        import gevent

        super().__init__(concurrency, executor, done)
        self._gevent = gevent

    def _spawn(self, fn: Callable[..., None], *args: Any) -> Any:
        return self._gevent.spawn(fn, *args)

    def _current(self) -> Any:
        return self._gevent.getcurrent()

    def _timeout(self, seconds: float, exc: BaseException) -> Any:
        return self._gevent.Timeout.start_new(seconds, exc)

    def _cancel(self, timer: Any) -> None:
        timer.close()

    def _soon(self, fn: Callable[[], None]) -> None:
        self._gevent.get_hub().loop.run_callback(fn)

    def _kill_all(self, greenlets: list[Any], exc: BaseException, timeout: float) -> None:
        self._gevent.killall(greenlets, exc, block=True, timeout=timeout)
