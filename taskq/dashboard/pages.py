"""What each page shows: plain functions from the monitor (and the broker, the
backend, beat) to the values its template renders.

They never build HTML: the templates do, with autoescaping on, so nothing a task
carries (arguments, results, tracebacks, names) can become markup. Functions that
read the broker or the backend block and are run off the event loop by ``web``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskq.beat.status import beat_status
from taskq.broker import dlq
from taskq.errors import TaskqError
from taskq.events.event import TASK_STATES
from taskq.events.state import TaskState

if TYPE_CHECKING:
    from taskq.dashboard.monitor import Monitor

#: Rows a task list shows at most.
ROWS = 100
#: Tasks of one workflow drawn at most.
TREE_LIMIT = 1000
STATES = sorted(set(TASK_STATES.values()))
CHART_WIDTH, CHART_HEIGHT = 600, 120


def overview(monitor: Monitor) -> dict[str, Any]:
    """Workers up and lost, each queue's depths, and the last hour's charts."""
    now = time.time()
    workers = monitor.fleet.workers()
    up = [w for w in workers if w.alive(now)]
    series = monitor.history.series(now)
    done = [float(m.done) for m in series]
    rate = [100.0 * m.failed / m.done if m.done else 0.0 for m in series]
    return {
        "workers": workers,
        "up": len(up),
        "lost": len(workers) - len(up),
        "now": now,
        "depths": sorted(monitor.depths.items()),
        "depth_error": monitor.depth_error,
        "counts": sorted(monitor.fleet.counts().items()),
        "throughput": chart(done, "tasks/min"),
        "failure_rate": chart(rate, "% failed", ceiling=100.0),
        "hour_done": sum(m.done for m in series),
        "hour_failed": sum(m.failed for m in series),
    }


def chart(values: list[float], unit: str, ceiling: float | None = None) -> dict[str, Any]:
    """An SVG polyline's points for ``values`` (one a minute, oldest first)."""
    top = ceiling or max(values + [1.0])
    step = CHART_WIDTH / max(1, len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{CHART_HEIGHT - (v / top) * (CHART_HEIGHT - 4):.1f}"
        for i, v in enumerate(values)
    )
    return {
        "points": points,
        "top": top,
        "last": values[-1] if values else 0,
        "unit": unit,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
    }


@dataclasses.dataclass(frozen=True)
class TaskFilter:
    """A task search: every given field must match (``name`` and ``worker`` are
    substrings; ``minutes``: changed within that many minutes)."""

    id: str = ""
    name: str = ""
    state: str = ""
    worker: str = ""
    minutes: float | None = None

    @classmethod
    def of(cls, query: Mapping[str, str]) -> TaskFilter:
        try:
            minutes = float(query["minutes"]) if query.get("minutes") else None
        except ValueError:
            minutes = None
        return cls(
            id=query.get("id", "").strip(),
            name=query.get("name", "").strip(),
            state=query.get("state", "").strip().upper(),
            worker=query.get("worker", "").strip(),
            minutes=minutes,
        )

    def matches(self, task: TaskState, now: float) -> bool:
        return (
            (not self.id or task.uuid.startswith(self.id))
            and (not self.name or self.name in (task.name or ""))
            and (not self.state or task.state == self.state)
            and (not self.worker or self.worker in (task.worker or ""))
            and (self.minutes is None or (task.timestamp or 0) >= now - self.minutes * 60)
        )


def tasks(monitor: Monitor, query: Mapping[str, str]) -> dict[str, Any]:
    """The tasks matching the search, the most recently changed first."""
    wanted = TaskFilter.of(query)
    now = time.time()
    found, total = monitor.fleet.find(lambda t: wanted.matches(t, now), ROWS)
    return {
        "filter": wanted,
        "tasks": found,
        "total": total,
        "states": STATES,
        "kept": monitor.fleet.max_tasks,
    }


@dataclasses.dataclass
class Node:
    """A task in its workflow's tree (chain, group, chord: by ``parent_id``)."""

    task: TaskState
    children: list[Node] = dataclasses.field(default_factory=list)


def family_tree(monitor: Monitor, task: TaskState) -> Node | None:
    """The tree of every known task sharing ``task``'s root, or None when it is alone."""
    root_id = task.root_id or task.uuid
    family, _ = monitor.fleet.find(lambda t: (t.root_id or t.uuid) == root_id, TREE_LIMIT)
    members = {t.uuid: t for t in family}
    if len(members) < 2:
        return None
    nodes = {uuid: Node(t) for uuid, t in members.items()}
    roots = []
    for node in sorted(nodes.values(), key=lambda n: n.task.sent or n.task.received or 0):
        parent = nodes.get(node.task.parent_id or "")
        if parent is not None and parent is not node:
            parent.children.append(node)
        else:
            roots.append(node)
    return roots[0] if len(roots) == 1 else Node(TaskState(root_id, "?"), roots)


def task(monitor: Monitor, task_id: str) -> dict[str, Any]:
    """One task from events, or what the result backend has when events forgot it."""
    found = monitor.fleet.task(task_id)
    stored: dict[str, Any] | None = None
    backend = monitor.app.results.backend
    if found is None and backend is not None:
        try:
            meta = backend.meta(task_id)
        except TaskqError as exc:
            meta = {"status": "unknown", "error": str(exc)}
        stored = {k: v for k, v in meta.items() if v is not None}
    runtime = found.runtime if found else None
    if found and runtime is None and found.started and (found.failed or found.succeeded):
        runtime = (found.failed or found.succeeded or 0.0) - found.started  # failures carry none
    return {
        "task_id": task_id,
        "task": found,
        "runtime": runtime,
        "stored": stored,
        "tree": family_tree(monitor, found) if found else None,
        "running": found is not None and found.state in ("RECEIVED", "STARTED", "PENDING"),
    }


def failures(monitor: Monitor) -> dict[str, Any]:
    """Failed tasks from events, and the dead-letter queue from the broker."""
    failed = monitor.fleet.tasks(ROWS, state="FAILURE")
    parked: list[dlq.Parked] = []
    error = None
    try:
        parked = dlq.parked(monitor.app.broker, ROWS)
    except TaskqError as exc:
        error = str(exc)
    return {"failed": failed, "parked": parked, "dlq_error": error, "limit": ROWS}


def schedules(monitor: Monitor) -> dict[str, Any]:
    """Beat's entries with their last run (``taskq beat status``)."""
    try:
        status = beat_status(monitor.app)
    except TaskqError as exc:
        return {"status": None, "error": str(exc), "lag": monitor.beat_lag}
    return {"status": status, "error": None, "lag": monitor.beat_lag}


def workers(monitor: Monitor) -> dict[str, Any]:
    """Each worker from events, with its stats and active tasks by remote control."""
    now = time.time()
    rows = []
    for worker in monitor.fleet.workers():
        stats = monitor.stats.get(worker.hostname) or {}
        pool = stats.get("pool") or {}
        rusage = stats.get("rusage") or {}
        rows.append(
            {
                "worker": worker,
                "alive": worker.alive(now),
                "pool": pool.get("implementation", "-"),
                "concurrency": pool.get("max-concurrency", "-"),
                "processed": sum((stats.get("total") or {}).values()) or worker.processed,
                "rss": _megabytes(rusage.get("maxrss")),
                "uptime": _duration(stats.get("uptime")),
                "active": monitor.active.get(worker.hostname) or [],
            }
        )
    return {"rows": rows, "error": monitor.control_error}


def _megabytes(kilobytes: object) -> str:
    """ru_maxrss is in kilobytes on Linux."""
    return f"{kilobytes / 1024:.1f} MB" if isinstance(kilobytes, (int, float)) else "-"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {sec:02d}s" if hours else f"{minutes}m {sec:02d}s"
