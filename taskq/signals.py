"""Signals: hooks a user connects to, fired by the worker at fixed points.

Connect a handler with ``signal.connect(handler)`` or as a decorator::

    from taskq.signals import task_failure

    @task_failure.connect
    def alert(sender, task_id, exception, **kwargs):
        ...

Handlers are called with keyword arguments only: ``sender``, ``signal`` and the
arguments the signal documents; accept ``**kwargs`` so new arguments never break
a handler. A handler that raises is logged with its traceback; the other handlers
still run and the task or worker that sent the signal never sees the error.

Where they fire: the task signals fire in the process that runs the task (a
prefork child, a thread of the worker, the asyncio pool's loop); ``task_failure``
for a hard time limit fires in the worker's main process, which detects it.
Handlers are held by strong references, so a lambda or a closure stays connected.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from taskq.task import Task
    from taskq.worker.worker import Worker

log = logging.getLogger("taskq.signals")

S = TypeVar("S")
Handler = Callable[..., object]
H = TypeVar("H", bound=Handler)


class Signal(Generic[S]):
    """A named hook; ``S`` is the type of its sender.

    Args:
        name: shown in logs.
        arguments: the keyword arguments ``send`` must give (besides ``sender``).
    """

    def __init__(self, name: str, arguments: tuple[str, ...]) -> None:
        self.name = name
        self.arguments = frozenset(arguments)
        self._receivers: list[tuple[Handler, object]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"

    def connect(self, handler: H, *, sender: object = None) -> H:
        """Call ``handler`` on every ``send``; with ``sender``, only for that sender
        (the object itself, or for tasks its name). Returns ``handler``, so this is
        usable as a decorator. Connecting the same handler twice is a no-op."""
        with self._lock:
            if all(h is not handler for h, _ in self._receivers):
                self._receivers.append((handler, sender))
        return handler

    def disconnect(self, handler: Handler) -> None:
        """Stop calling ``handler`` (no error when it was not connected)."""
        with self._lock:
            self._receivers = [(h, s) for h, s in self._receivers if h is not handler]

    def send(self, sender: S, **kwargs: Any) -> list[tuple[Handler, object]]:
        """Call every matching handler; return ``(handler, result or exception)`` pairs.

        Raises:
            TypeError: ``kwargs`` are not exactly the signal's arguments (a bug in
                the sender, never in a handler).
        """
        if kwargs.keys() != self.arguments:
            raise TypeError(
                f"{self.name}.send() takes {sorted(self.arguments)}, got {sorted(kwargs)}"
            )
        if not self._receivers:  # the common case, sent for every task: no lock needed
            return []
        with self._lock:
            receivers = list(self._receivers)
        replies: list[tuple[Handler, object]] = []
        for handler, wanted in receivers:
            if wanted is not None and not _matches(sender, wanted):
                continue
            try:
                replies.append((handler, handler(sender=sender, signal=self, **kwargs)))
            except Exception as exc:
                log.exception("Signal handler %r for %s raised", handler, self.name)
                replies.append((handler, exc))
        return replies


def _matches(sender: object, wanted: object) -> bool:
    return sender is wanted or getattr(sender, "name", None) == wanted


#: Before a task runs. Sender: the task.
task_prerun: Signal[Task[Any, Any]] = Signal("task_prerun", ("task_id", "task", "args", "kwargs"))
#: After a task ran, whatever happened. Sender: the task. ``state`` is the final state.
task_postrun: Signal[Task[Any, Any]] = Signal(
    "task_postrun", ("task_id", "task", "args", "kwargs", "retval", "state")
)
#: A task succeeded (its result is stored). Sender: the task.
task_success: Signal[Task[Any, Any]] = Signal("task_success", ("result",))
#: A task failed (also for hard time limits). Sender: the task, or None when unknown.
task_failure: Signal[Task[Any, Any] | None] = Signal(
    "task_failure", ("task_id", "exception", "args", "kwargs", "traceback")
)
#: A task asked to be retried. Sender: the task. ``request`` is its ``Context``.
task_retry: Signal[Task[Any, Any]] = Signal("task_retry", ("request", "reason"))
#: A task was revoked, expired or terminated. Sender: the task, or None when unknown.
task_revoked: Signal[Task[Any, Any] | None] = Signal(
    "task_revoked", ("request", "terminated", "signum", "expired")
)
#: The worker consumes. Sender: the ``Worker``.
worker_ready: Signal[Worker] = Signal("worker_ready", ())
#: The worker stopped (every message settled or given back). Sender: the ``Worker``.
worker_shutdown: Signal[Worker] = Signal("worker_shutdown", ())
#: A prefork child started, after it dropped the parent's connections. Sender: None.
worker_process_init: Signal[None] = Signal("worker_process_init", ("pid",))
