"""What the dashboard knows, kept up to date by two threads of its own.

The events thread (an ``EventReceiver``) folds every event into a bounded
``FleetState`` (at most ``max_tasks`` tasks), counts finished tasks per minute
(``History``), hands the event to the Prometheus metrics and records how late it
arrived. The poller thread reads, every ``poll_interval`` seconds, what events do
not carry: each queue's depth from the broker, each worker's stats and active
tasks by remote control, and beat's lag from the result backend. Pages read
the latest of each without waiting on the broker; ``version`` goes up with every
change, which is what the live stream watches.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskq.beat.status import beat_status
from taskq.broker import dlq
from taskq.dashboard.history import History
from taskq.errors import TaskqError
from taskq.events.state import FleetState
from taskq.events.view import receiver
from taskq.queues import Queues

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.broker.base import QueueDepth
    from taskq.metrics.fleet import FleetMetrics

log = logging.getLogger("taskq.dashboard")

#: Lags kept for the percentiles ``/api/stats`` reports.
LAG_SAMPLES = 10_000
#: Queue names learned from events, at most (the configured ones always count).
MAX_QUEUES = 100
#: Dead letters read each poll to learn the queues they came from.
DLQ_LOOK = 100
_FINISHED = {"task-succeeded": False, "task-failed": True}


class Monitor:
    """The fleet as events, the broker and remote control show it (module docstring).

    Args:
        app: the app whose broker, backend and control are read.
        max_tasks: tasks kept in memory.
        poll_interval: seconds between reads of depths, worker stats and beat.
        metrics: the Prometheus metrics to feed, if any.
    """

    def __init__(
        self,
        app: App,
        max_tasks: int,
        poll_interval: float = 2.0,
        metrics: FleetMetrics | None = None,
    ) -> None:
        self.app = app
        self.fleet = FleetState(max_tasks=max_tasks)
        self.history = History()
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.version = 0
        self.started = time.time()
        self.lags: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES)
        self.depths: dict[str, QueueDepth] = {}
        self.depth_error: str | None = None
        self.stats: dict[str, Any] = {}
        self.active: dict[str, Any] = {}
        self.control_error: str | None = None
        self.beat_lag: float | None = None
        self.queue_names = set(Queues.from_settings(app.conf).names())
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the events thread -----------------------------------------------------------------

    def handle(self, event: dict[str, Any]) -> None:
        """Fold one event in (called on the events thread)."""
        changed = self.fleet.apply(event)
        kind = event.get("type")
        if kind in _FINISHED:
            self.history.record(_FINISHED[kind], event.get("local_received"))
        if "queue" in event:
            self._learn_queues([event["queue"]])
        if self.metrics is not None:
            try:
                self.metrics.observe(event)
            except Exception:  # a metrics bug must not stop the pages
                log.exception("Dashboard: the metrics could not take an event")
        timestamp = event.get("timestamp")
        if isinstance(timestamp, (int, float)):
            self.lags.append(time.time() - timestamp)
        if changed is not None:
            self.version += 1

    def lag(self) -> dict[str, float | int | None]:
        """Seconds from an event's timestamp to its being applied here: the median,
        the 99th percentile and the largest of the last ``LAG_SAMPLES`` events."""
        samples = sorted(self.lags)
        if not samples:
            return {"samples": 0, "p50": None, "p99": None, "max": None}
        at = len(samples) - 1
        return {
            "samples": len(samples),
            "p50": samples[at // 2],
            "p99": samples[int(at * 0.99)],
            "max": samples[-1],
        }

    # -- the poller ------------------------------------------------------------------------

    def poll(self) -> None:
        """Read depths, worker stats and beat once (the poller does this in a loop)."""
        self._read_depths()
        self._read_workers()
        self._read_beat()

    def _learn_queues(self, names: Iterable[object]) -> None:
        for name in names:
            if isinstance(name, str) and name and len(self.queue_names) < MAX_QUEUES:
                self.queue_names.add(name)

    def _read_depths(self) -> None:
        # Queues nobody configured or consumes still show once a message of theirs
        # is dead-lettered.
        with contextlib.suppress(TaskqError, NotImplementedError):
            self._learn_queues(p.queue for p in dlq.parked(self.app.broker, DLQ_LOOK))
        try:
            depths = self.app.broker.queue_depths(sorted(self.queue_names))
            error = None
        except NotImplementedError:
            depths, error = {}, "This broker cannot count its queues."
        except TaskqError as exc:
            depths, error = self.depths, str(exc)
        if depths != self.depths or error != self.depth_error:
            self.depths, self.depth_error = depths, error
            self.version += 1
        if self.metrics is not None and depths:
            self.metrics.set_queues(
                {q: (d.ready, d.delayed or 0, d.dead or 0) for q, d in depths.items()}
            )

    def _read_workers(self) -> None:
        now = time.time()
        workers = self.fleet.workers()
        alive = [w.hostname for w in workers if w.alive(now)]
        if self.metrics is not None:
            self.metrics.set_workers(len(alive), len(workers) - len(alive))
        if not alive or not self.app.control.can_broadcast:
            return
        inspect = self.app.control.inspect(timeout=1.0, limit=len(alive))
        try:
            stats, active = inspect.stats() or {}, inspect.active() or {}
            queues = inspect.active_queues() or {}
            error = None
        except TaskqError as exc:
            stats, active, queues, error = self.stats, self.active, {}, str(exc)
        self._learn_queues(
            q.get("name")
            for listed in queues.values()
            if isinstance(listed, list)
            for q in listed
            if isinstance(q, dict)
        )
        if (stats, active, error) != (self.stats, self.active, self.control_error):
            self.stats, self.active, self.control_error = stats, active, error
            self.version += 1

    def _read_beat(self) -> None:
        if not self.app.periodic_tasks:
            return
        try:
            entries = beat_status(self.app).entries
        except TaskqError as exc:
            log.debug("Dashboard: could not read beat's status: %s", exc)
            return
        now = datetime.now(timezone.utc)
        late = [(now - e.next_run_at).total_seconds() for e in entries]
        self.beat_lag = max(0.0, max(late)) if late else None
        if self.metrics is not None:
            self.metrics.set_beat_lag(self.beat_lag)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the poller outlives any one bad read
                log.exception("Dashboard: polling failed")
            self._stop.wait(self.poll_interval)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening to events and polling, each on a daemon thread.

        Raises:
            ConfigurationError: the broker cannot broadcast events (SQLite).
        """
        events = receiver(self.app.conf, self.handle, wakeup=self.app.control.heartbeat)
        self._threads = [
            threading.Thread(
                target=events.run, args=(self._stop,), name="taskq-dashboard-events", daemon=True
            ),
            threading.Thread(target=self._poll_loop, name="taskq-dashboard-poll", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(3)
