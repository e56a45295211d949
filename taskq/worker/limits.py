"""Time limits: raising them inside a running task.

Which limits apply is the task's ``Policy`` (``taskq.worker.policy``); precedence,
highest first: the message's ``timelimit`` header (set per call with
``apply_async(time_limit=..., soft_time_limit=...)``), the task's option
(``@app.task(time_limit=...)``), then the worker's ``--time-limit`` /
``--soft-time-limit``, then ``task_time_limit`` / ``task_soft_time_limit``.

How a limit reaches the task depends on where it runs (``enforced``):

* In a process's main thread (a prefork child, the solo pool under the CLI) a
  ``SIGALRM`` timer raises the exception in the task's frame; it interrupts
  blocking calls such as ``time.sleep`` or a socket read.
* In any other thread (the threads pool, sync tasks of the asyncio pool) the
  exception is set as the thread's asynchronous exception. Python raises it the
  next time that thread runs Python code: a task blocked inside one C call (a
  long ``time.sleep``, a read without timeout) sees it only when the call returns.
  A thread cannot be killed, so this is all a hard limit can do there.

The prefork pool does not raise the hard limit in the child: its parent kills
the child at the deadline, whatever the task is doing.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from taskq.errors import SoftTimeLimitExceeded, TaskqError, TimeLimitExceeded

if TYPE_CHECKING:
    pass

Limit = tuple[type[TaskqError], float]


def describe(kind: type[TaskqError], seconds: float) -> str:
    what = "soft time limit" if kind is SoftTimeLimitExceeded else "time limit"
    return f"{what} ({seconds:g}s) exceeded"


def schedule(soft: float | None, hard: float | None) -> list[Limit]:
    """The limits to raise, earliest first: no soft limit when the hard one comes
    first or at the same time."""
    limits: list[Limit] = []
    if soft and not (hard and hard <= soft):
        limits.append((SoftTimeLimitExceeded, soft))
    if hard:
        limits.append((TimeLimitExceeded, hard))
    return sorted(limits, key=lambda item: item[1])


@contextlib.contextmanager
def enforced(soft: float | None, hard: float | None) -> Iterator[None]:
    """Raise ``SoftTimeLimitExceeded`` after ``soft`` and ``TimeLimitExceeded`` after
    ``hard`` seconds in the code running inside the block (in this thread)."""
    limits = schedule(soft, hard)
    if not limits:
        yield
        return
    main = threading.current_thread() is threading.main_thread()
    guard = _alarm if main and hasattr(signal, "setitimer") else _async_exception
    with guard(limits):
        yield


@contextlib.contextmanager
def _alarm(limits: list[Limit]) -> Iterator[None]:
    pending = list(limits)
    start = time.monotonic()

    def on_alarm(signum: int, frame: Any) -> None:
        kind, seconds = pending.pop(0)
        if pending:
            remaining = start + pending[0][1] - time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001))
        raise kind(describe(kind, seconds))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, pending[0][1])
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_MESSAGED: dict[tuple[str, float], type[TaskqError]] = {}


def _with_message(kind: type[TaskqError], seconds: float) -> type[TaskqError]:
    """``kind`` raised with its message when instantiated without arguments: an
    asynchronous exception is raised from its class. It keeps the name and module
    of ``kind``, so a result reader rebuilds ``kind`` itself."""
    key = (kind.__name__, seconds)
    if key in _MESSAGED:
        return _MESSAGED[key]
    message = describe(kind, seconds)

    def __init__(self: TaskqError, *args: object) -> None:  # noqa: N807
        kind.__init__(self, *(args or (message,)))

    namespace = {"__init__": __init__, "__module__": kind.__module__}
    subclass = type(kind.__name__, (kind,), namespace)
    subclass.__qualname__ = kind.__qualname__
    _MESSAGED[key] = subclass
    return subclass


@contextlib.contextmanager
def _async_exception(limits: list[Limit]) -> Iterator[None]:
    thread_id = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    inside = [True]

    def fire(kind: type[TaskqError], seconds: float) -> None:
        with lock:
            if inside[0]:
                exc = ctypes.py_object(_with_message(kind, seconds))
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread_id, exc)

    timers = [threading.Timer(seconds, fire, (kind, seconds)) for kind, seconds in limits]
    for timer in timers:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        with lock:
            inside[0] = False
            # Clear an exception set but not yet raised: it must not escape the block.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(thread_id, None)
        for timer in timers:
            timer.cancel()
