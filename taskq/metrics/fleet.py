"""Fleet-wide Prometheus metrics, drawn from the event stream (the dashboard's ``/metrics``).

``FleetMetrics.observe`` takes each event as ``taskq.events.EventReceiver`` hands
it on and counts task events by task name and state; the dashboard adds what
events do not carry: queue depths (``set_queues``), workers up and lost
(``set_workers``) and beat's lag (``set_beat_lag``). ``render`` is the body of
``GET /metrics``. docs/monitoring.md lists the metrics.

Only ``task-sent`` and ``task-received`` carry the task's name, so the name (and
the times the wait is measured from) are kept per task id until the task's final
event, in a map of at most ``max_tracked`` tasks: past it the oldest are
forgotten, and a later event of a forgotten task counts under ``task="unknown"``.
The names of the last ``max_tracked`` tasks that ended are kept too, because a
producer's ``task-sent`` comes from another sender and may arrive after the
worker's events: it is counted, and starts nothing.
Task names come from the network, so at most ``max_task_names`` distinct ones get
series of their own; the rest count under ``task="other"``.

The wait (``taskq_task_wait_seconds``) runs from ``task-sent`` (sent by producers
with ``task_send_sent_event``) to ``task-started``; when no ``task-sent`` was seen
it runs from ``task-received``, so it leaves out the time the message spent in
the queue. A task with an ETA or countdown waits from its ETA. The run time
(``taskq_task_runtime_seconds``) is the event's ``runtime`` (``task-succeeded``)
or, for ``task-failed`` and ``task-retried``, which carry none, the time since
``task-started``. Times are the events' timestamps, which the receiver converts
to this host's clock; a wait that clock skew makes negative counts as 0.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Upper bounds of the run time and wait histograms, in seconds: from 5 ms tasks to
#: hour-long ones (Prometheus's defaults stop at 10 s).
BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip

#: Task event type -> the ``state`` label it counts under.
STATES = {
    "task-sent": "sent",
    "task-received": "received",
    "task-started": "started",
    "task-succeeded": "succeeded",
    "task-failed": "failed",
    "task-retried": "retried",
    "task-rejected": "rejected",
    "task-revoked": "revoked",
}
#: After these nothing more happens to the task: it is forgotten.
_FINAL = frozenset({"task-succeeded", "task-failed", "task-rejected", "task-revoked"})
#: These end a run: the run time is observed.
_RAN = frozenset({"task-succeeded", "task-failed", "task-retried"})
#: The ``queue`` gauge's states, in the order ``set_queues`` takes them.
QUEUE_STATES = ("ready", "delayed", "dead_lettered")

UNKNOWN = "unknown"
OTHER = "other"


class _Task:
    """What is kept of one task between its events."""

    __slots__ = ("name", "since", "started")

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: float | None = None  # sent (or received, or its ETA): the wait's start
        self.started: float | None = None


class FleetMetrics:
    """Fleet-wide metrics from events (see the module docstring). Thread-safe.

    Args:
        max_tracked: tasks between their first and their final event kept at once.
        max_task_names: distinct task names with series of their own.
    """

    registry: CollectorRegistry

    def __init__(self, *, max_tracked: int = 10_000, max_task_names: int = 1_000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_tracked = max_tracked
        self.max_task_names = max_task_names
        self._counter = Counter(
            "taskq_tasks",
            "Task events seen, by task name and state (the event's type).",
            ["task", "state"],
            registry=self.registry,
        )
        self._runtime = Histogram(
            "taskq_task_runtime_seconds",
            "How long tasks ran, by task name.",
            ["task"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._wait = Histogram(
            "taskq_task_wait_seconds",
            "Time from task-sent (else task-received, or the ETA) to task-started.",
            ["task"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._fleet = _FleetGauges()
        self.registry.register(self._fleet)
        # Label children by key: Counter.labels() checks its arguments every call.
        self._counters: dict[tuple[str, str], Any] = {}
        self._runtimes: dict[str, Any] = {}
        self._waits: dict[str, Any] = {}
        self._names: set[str] = set()
        self._tasks: collections.OrderedDict[str, _Task] = collections.OrderedDict()
        # Tasks that ended lately -> name: a producer's task-sent may arrive after the
        # worker's events (another sender, another connection).
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- events --------------------------------------------------------------------------

    def observe(self, event: dict[str, Any]) -> None:
        """Count one event (as ``EventReceiver`` hands it on); others than task events
        and malformed ones are ignored."""
        kind, task_id = event.get("type"), event.get("uuid")
        if not isinstance(kind, str) or not isinstance(task_id, str):
            return
        state = STATES.get(kind)
        if state is None:
            return
        stamp = event.get("timestamp")
        at = float(stamp) if isinstance(stamp, (int, float)) else None
        with self._lock:
            task = self._track(task_id, kind, event.get("name"))
            name = task.name if task is not None else self._ended.get(task_id, UNKNOWN)
            self._count(name, state)
            if task is None:
                return
            if kind == "task-sent" or kind == "task-received":
                if kind == "task-sent" or task.since is None:
                    task.since = _later(at, event.get("eta"))
            elif kind == "task-started":
                if at is not None and task.since is not None:
                    self._histogram(self._waits, self._wait, name).observe(
                        max(0.0, at - task.since)
                    )
                task.started = at
            elif kind in _RAN:
                runtime = event.get("runtime")
                if not isinstance(runtime, (int, float)) and at is not None and task.started:
                    runtime = at - task.started
                if isinstance(runtime, (int, float)):
                    self._histogram(self._runtimes, self._runtime, name).observe(max(0.0, runtime))
                task.since = task.started = None  # a retry is received again
            if kind in _FINAL:
                del self._tasks[task_id]
                self._ended[task_id] = name
                if len(self._ended) > self.max_tracked:
                    self._ended.popitem(last=False)

    def _track(self, task_id: str, kind: str, name: object) -> _Task | None:
        """The task's record, made by its first event (None: a final event of a task
        not known here, or a ``task-sent`` that arrived after the task ended)."""
        task = self._tasks.get(task_id)
        if task is None:
            if kind in _FINAL or (kind == "task-sent" and task_id in self._ended):
                return None
            task = self._tasks[task_id] = _Task(self._label(name))
            if len(self._tasks) > self.max_tracked:
                self._tasks.popitem(last=False)
        elif task.name == UNKNOWN and isinstance(name, str):
            task.name = self._label(name)
        return task

    def _label(self, name: object) -> str:
        if not isinstance(name, str):
            return UNKNOWN
        if name in self._names:
            return name
        if len(self._names) >= self.max_task_names:
            return OTHER
        self._names.add(name)
        return name

    def _count(self, name: str, state: str) -> None:
        child = self._counters.get((name, state))
        if child is None:
            child = self._counters[name, state] = self._counter.labels(name, state)
        child.inc()

    @staticmethod
    def _histogram(cache: dict[str, Any], metric: Histogram, name: str) -> Any:
        child = cache.get(name)
        if child is None:
            child = cache[name] = metric.labels(name)
        return child

    # -- what events do not say ----------------------------------------------------------

    def set_queues(self, depths: Mapping[str, tuple[int, int, int]]) -> None:
        """Each queue's messages: ``queue -> (ready, delayed, dead-lettered)``. Queues
        not in ``depths`` are no longer reported."""
        self._fleet.queues = {q: (int(r), int(d), int(x)) for q, (r, d, x) in depths.items()}

    def set_workers(self, up: int, lost: int) -> None:
        """Workers alive (heartbeating) and lost (silent past their heartbeat)."""
        self._fleet.workers = (int(up), int(lost))

    def set_beat_lag(self, seconds: float | None) -> None:
        """How late beat's most overdue entry is (None: no beat known; not reported)."""
        self._fleet.beat_lag = None if seconds is None else float(seconds)

    # -- reading -------------------------------------------------------------------------

    @property
    def tracked(self) -> int:
        """Tasks kept now (between their first and their final event)."""
        return len(self._tasks)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _later(at: float | None, eta: object) -> float | None:
    """``at``, or the task's ETA (an ISO 8601 string) when that is later."""
    if not isinstance(eta, str) or at is None:
        return at
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return at
    if when.tzinfo is None:  # Celery's naive ETAs are UTC
        return at
    return max(at, when.timestamp())


class _FleetGauges(Collector):
    """The gauges set from outside the event stream, reported as last set."""

    def __init__(self) -> None:
        self.queues: dict[str, tuple[int, int, int]] = {}
        self.workers: tuple[int, int] | None = None
        self.beat_lag: float | None = None

    def collect(self) -> Iterator[Metric]:
        queues = GaugeMetricFamily(
            "taskq_queue_messages",
            "Messages in each queue: ready to run, delayed (ETA, countdown, retry), dead-lettered.",
            labels=["queue", "state"],
        )
        for queue, counts in sorted(self.queues.items()):
            for state, count in zip(QUEUE_STATES, counts, strict=True):
                queues.add_metric([queue, state], count)
        yield queues
        workers = GaugeMetricFamily(
            "taskq_workers", "Workers by state: up (heartbeating) or lost.", labels=["state"]
        )
        if self.workers is not None:
            workers.add_metric(["up"], self.workers[0])
            workers.add_metric(["lost"], self.workers[1])
        yield workers
        lag = GaugeMetricFamily(
            "taskq_beat_lag_seconds", "How late beat's most overdue schedule entry is."
        )
        if self.beat_lag is not None:
            lag.add_metric([], self.beat_lag)
        yield lag
