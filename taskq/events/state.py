"""The fleet as the event stream shows it: workers and recent tasks, in memory.

``FleetState.apply(event)`` folds one event (as ``EventReceiver`` hands it on) into
a ``WorkerState`` or ``TaskState`` and returns what changed, so a live view or a
dashboard can redraw just that. Memory is bounded: at most ``max_tasks`` tasks
(the oldest seen first are forgotten) and ``max_workers`` workers.

Events may arrive out of order (several workers, several connections). A task's
``state`` moves to an event's state when that event is not older, by Lamport
clock, than the one that set the current state, or when it is a final state
(success, failure, revoked, rejected) and the current one is not; every event
still fills in the fields it carries. A worker is ``alive`` while its last
heartbeat is younger than twice its heartbeat interval (Celery's rule) and it
has not said ``worker-offline``.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from taskq.events.event import TASK_STATES

#: Task states after which nothing more happens to the task.
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})
#: A worker is lost when no heartbeat came for this many heartbeat intervals.
EXPIRE_FACTOR = 2.0

_TASK_FIELDS = (
    "name", "args", "kwargs", "root_id", "parent_id", "retries", "eta", "expires",
    "result", "exception", "traceback", "runtime", "queue", "exchange", "routing_key",
)  # fmt: skip
_WORKER_FIELDS = ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "pid")


@dataclasses.dataclass
class WorkerState:
    """One worker, from its worker events (and the hostname of its task events)."""

    hostname: str
    pid: int | None = None
    freq: float = 2.0
    active: int = 0
    processed: int = 0
    loadavg: list[float] = dataclasses.field(default_factory=list)
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None
    last_heartbeat: float | None = None  # local time it was received
    offline: bool = False
    clock: int = 0

    def alive(self, now: float | None = None) -> bool:
        """Heard from within ``EXPIRE_FACTOR`` heartbeat intervals and not offline."""
        if self.offline or self.last_heartbeat is None:
            return False
        return (now or time.time()) < self.last_heartbeat + self.freq * EXPIRE_FACTOR

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["alive"] = self.alive(now)
        return out


@dataclasses.dataclass
class TaskState:
    """One task, merged from its events."""

    uuid: str
    state: str = "PENDING"
    name: str | None = None
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    eta: str | None = None
    expires: str | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    succeeded: float | None = None
    failed: float | None = None
    retried: float | None = None
    rejected: float | None = None
    revoked: float | None = None
    timestamp: float | None = None  # of the latest event
    clock: int = 0  # of the event that set ``state``

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FleetState:
    """Workers and recent tasks built from events; thread-safe (see module docstring).

    Args:
        max_tasks: tasks kept; the oldest are forgotten first.
        max_workers: workers kept; the longest silent are forgotten first.
    """

    def __init__(self, max_tasks: int = 10_000, max_workers: int = 1_000) -> None:
        self.max_tasks = max_tasks
        self.max_workers = max_workers
        self.event_count = 0
        self._tasks: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self._workers: collections.OrderedDict[str, WorkerState] = collections.OrderedDict()
        self._lock = threading.Lock()

    def apply(self, event: dict[str, Any]) -> WorkerState | TaskState | None:
        """Fold ``event`` in; return the worker or task it changed (None: ignored)."""
        kind = event.get("type")
        hostname = event.get("hostname")
        with self._lock:
            self.event_count += 1
            if isinstance(kind, str) and kind.startswith("worker-") and isinstance(hostname, str):
                return self._worker_event(kind, hostname, event)
            if kind in TASK_STATES and isinstance(event.get("uuid"), str):
                if isinstance(hostname, str) and kind != "task-sent":
                    self._worker(hostname)
                return self._task_event(kind, event)
        return None

    def _worker(self, hostname: str) -> WorkerState:
        worker = self._workers.get(hostname)
        if worker is None:
            worker = self._workers[hostname] = WorkerState(hostname)
            while len(self._workers) > self.max_workers:
                self._workers.popitem(last=False)
        return worker

    def _worker_event(self, kind: str, hostname: str, event: dict[str, Any]) -> WorkerState:
        worker = self._worker(hostname)
        self._workers.move_to_end(hostname)
        for name in _WORKER_FIELDS:
            if name in event:
                setattr(worker, name, event[name])
        worker.clock = max(worker.clock, int(event.get("clock") or 0))
        if kind == "worker-offline":
            worker.offline = True
        else:
            worker.offline = False
            worker.last_heartbeat = float(event.get("local_received") or time.time())
        return worker

    def _task_event(self, kind: str, event: dict[str, Any]) -> TaskState:
        task_id = event["uuid"]
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = TaskState(task_id)
            while len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)
        for name in _TASK_FIELDS:
            value = event.get(name)
            if value is not None:
                setattr(task, name, value)
        timestamp = event.get("timestamp")
        if isinstance(timestamp, (int, float)):
            setattr(task, kind.split("-", 1)[1], float(timestamp))
            task.timestamp = max(task.timestamp or 0.0, float(timestamp))
        if kind != "task-sent" and isinstance(event.get("hostname"), str):
            task.worker = event["hostname"]
        state, clock = TASK_STATES[kind], int(event.get("clock") or 0)
        newer = clock >= task.clock
        if (newer and task.state not in FINAL_STATES) or (
            state in FINAL_STATES and (newer or task.state not in FINAL_STATES)
        ):
            task.state, task.clock = state, clock
        return task

    # -- reading -------------------------------------------------------------------------

    def workers(self) -> list[WorkerState]:
        """Every known worker, by host name."""
        with self._lock:
            return [dataclasses.replace(w) for _, w in sorted(self._workers.items())]

    def worker(self, hostname: str) -> WorkerState | None:
        with self._lock:
            found = self._workers.get(hostname)
            return dataclasses.replace(found) if found else None

    def tasks(
        self,
        limit: int | None = None,
        *,
        state: str | None = None,
        name: str | None = None,
        worker: str | None = None,
    ) -> list[TaskState]:
        """Tasks, the most recently changed first, optionally filtered."""
        with self._lock:
            found = [
                dataclasses.replace(t)
                for t in reversed(self._tasks.values())
                if (state is None or t.state == state)
                and (name is None or t.name == name)
                and (worker is None or t.worker == worker)
            ]
        found.sort(key=lambda t: t.timestamp or 0.0, reverse=True)
        return found[:limit] if limit is not None else found

    def find(self, match: Callable[[TaskState], bool], limit: int) -> tuple[list[TaskState], int]:
        """Up to ``limit`` copies of the tasks ``match`` accepts, the most recently
        changed first, and how many it accepted. The lock is held only to take the
        list and to copy the ones returned, so a search of a large state does not
        hold up ``apply`` (a dashboard searching while events pour in); ``match``
        may see a task between two fields of an event."""
        with self._lock:
            kept = list(self._tasks.values())
        found = [task for task in kept if match(task)]
        found.sort(key=lambda t: t.timestamp or 0.0, reverse=True)
        with self._lock:
            return [dataclasses.replace(t) for t in found[:limit]], len(found)

    def task(self, task_id: str) -> TaskState | None:
        with self._lock:
            found = self._tasks.get(task_id)
            return dataclasses.replace(found) if found else None

    def task_count(self) -> int:
        """How many tasks are kept now (at most ``max_tasks``)."""
        with self._lock:
            return len(self._tasks)

    def counts(self) -> dict[str, int]:
        """How many known tasks are in each state."""
        with self._lock:
            return dict(collections.Counter(t.state for t in self._tasks.values()))
