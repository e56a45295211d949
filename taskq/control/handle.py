"""What remote control commands may see and do in a worker: ``WorkerHandle``.

The command handlers (``taskq.control.commands``) never touch the worker's
internals; the worker implements this small protocol and hands itself to the
control server. Raising ``CommandError`` from a method answers the command with
Celery's ``{"error": message}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from taskq.errors import TaskqError


class CommandError(TaskqError):
    """A control command could not be carried out; the message goes to the caller."""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """A task a worker holds, in the fields Celery's ``inspect active`` shows."""

    id: str
    name: str
    args: Any
    kwargs: Any
    argsrepr: str
    kwargsrepr: str
    hostname: str
    time_start: float | None
    acknowledged: bool
    delivery_info: dict[str, Any]
    worker_pid: int | None

    def as_celery(self, safe: bool = False) -> dict[str, Any]:
        """Celery's TASK_INFO; ``safe`` gives the argument reprs, not the values."""
        return {
            "id": self.id,
            "name": self.name,
            "args": self.argsrepr if safe else self.args,
            "kwargs": self.kwargsrepr if safe else self.kwargs,
            "type": self.name,
            "hostname": self.hostname,
            "time_start": self.time_start,
            "acknowledged": self.acknowledged,
            "delivery_info": self.delivery_info,
            "worker_pid": self.worker_pid,
        }


@dataclasses.dataclass(frozen=True)
class Scheduled:
    """A task held until its ETA."""

    eta: str | None
    priority: int | None
    task: TaskInfo


class WorkerHandle(Protocol):
    """The worker as remote control sees it."""

    hostname: str

    def active(self) -> list[TaskInfo]:
        """Tasks running now."""

    def reserved(self) -> list[TaskInfo]:
        """Tasks received and waiting to run (not those held for an ETA)."""

    def scheduled(self) -> list[Scheduled]:
        """Tasks held until their ETA."""

    def stats(self) -> dict[str, Any]:
        """Celery's ``inspect stats`` reply."""

    def registered(self) -> dict[str, dict[str, Any]]:
        """Task name -> its attributes (``rate_limit``, ``time_limit``, ...)."""

    def conf(self, with_defaults: bool) -> dict[str, Any]:
        """The settings (only those changed from the defaults unless
        ``with_defaults``), passwords masked."""

    def clock(self) -> int:
        """The worker's Lamport clock now."""

    def revoked(self) -> list[str]:
        """Task ids revoked through remote control since the worker started."""

    def revoke(self, ids: list[str], terminate: bool, signum: int) -> list[str]:
        """Never run ``ids``; with ``terminate``, stop those running. Returns the ids
        it stopped."""

    def queues(self) -> list[str]:
        """The queues consumed now."""

    def add_queue(self, name: str) -> bool:
        """Start consuming ``name``; False if consumed already."""

    def cancel_queue(self, name: str) -> bool:
        """Stop consuming ``name``; False if it was not consumed."""

    def resize_pool(self, delta: int) -> int:
        """Grow (positive) or shrink the pool; returns its new size."""

    def autoscale(self, high: int, low: int) -> tuple[int, int]:
        """Set the autoscale bounds; returns (max, min)."""

    def set_rate_limit(self, task_name: str, rate: str | None) -> None:
        """Replace a task's rate limit on this worker (None: no limit)."""

    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None:
        """Replace a task's time limits on this worker."""

    def set_task_events(self, enabled: bool) -> bool:
        """Turn task events on or off; False if they already were."""

    def send_heartbeat(self) -> None:
        """Send a worker-heartbeat event now."""

    def shutdown(self) -> None:
        """Begin a warm shutdown."""
