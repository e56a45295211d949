"""One worker's Prometheus metrics, scraped from the worker itself (``taskq worker
--metrics-port``), with or without events.

The executor and the settlement call ``WorkerMeter.task_done`` once for each
task's outcome, in the process where the outcome is known (a prefork child for a
task it ran, the worker for one it did not run); each process counts in files of
its own (``taskq.metrics.files``), which the scrape adds up, so a prefork
worker's numbers include its children's, recycled ones too. What the worker
holds now (running, reserved, scheduled tasks, leased messages) and what it is
(``info``) are read from the worker when scraped (``Live``), so they cost nothing
per task.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from taskq.errors import ConfigurationError
from taskq.metrics import files
from taskq.metrics.fleet import BUCKETS
from taskq.version import __version__

#: The state a meter is told (taskq's ``State``, or ``LOST``: the process running
#: the task died) -> the ``state`` label of ``taskq_worker_tasks_total``.
OUTCOMES = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "REJECTED": "rejected",
    "IGNORED": "ignored",
    "REVOKED": "revoked",
    "LOST": "lost",
}
#: Outcomes of a run: their run time is observed.
RAN = frozenset({"succeeded", "failed", "retried", "rejected", "ignored"})
#: The ``task`` label of a task this worker does not have (the name is the sender's:
#: it gets no series of its own).
UNREGISTERED = "unregistered"

_TASKS = "taskq_worker_tasks"
_TASKS_HELP = "Tasks this worker finished, by task name and outcome."
_RUNTIME = "taskq_worker_task_runtime_seconds"
_RUNTIME_HELP = "How long tasks ran in this worker, by task name."


@dataclasses.dataclass(frozen=True)
class Live:
    """What a worker holds and is, read when scraped."""

    hostname: str
    pool: str
    concurrency: int
    active: int  # running now (prefork: handed to a child)
    reserved: int  # received, waiting for a pool slot or a rate limit
    scheduled: int  # received, waiting for their ETA
    prefetched: int  # messages leased from the broker and not settled yet
    started_at: float  # Unix time


class WorkerMeter:
    """Counts task outcomes into the worker's metrics files (see the module docstring).

    Args:
        directory: where the files go: private to this worker, made before its pool
            starts (children must inherit it), removed by ``close``.
        tasks: the worker's registered tasks: other names count as ``unregistered``.
    """

    def __init__(self, directory: str, tasks: Mapping[str, object]) -> None:
        self.directory = directory
        self._tasks = tasks
        self._files = files.ProcessFiles(directory)
        # (task, state) -> the keys of its samples: built once, then one dict lookup.
        # Bounded: names not registered share one entry. No lock (a fork could
        # inherit it held): building an entry twice is harmless.
        self._counted: dict[tuple[str, str], tuple[str, str, list[str]]] = {}

    def task_done(self, task: str | None, state: str, runtime: float | None = None) -> None:
        """Count how ``task`` ended (a key of ``OUTCOMES``), and how long it ran."""
        name = task if task is not None and task in self._tasks else UNREGISTERED
        keys = self._counted.get((name, state))
        if keys is None:
            keys = self._counted[name, state] = self._keys(name, state)
        counter, total, buckets = keys
        if runtime is None or not buckets:
            self._files.add((("counter", counter, 1.0),))
            return
        at = 0
        while at < len(BUCKETS) and runtime > BUCKETS[at]:
            at += 1
        self._files.add(
            (
                ("counter", counter, 1.0),
                ("histogram", total, runtime),
                ("histogram", buckets[at], 1.0),
            ),
            buckets,
        )

    @staticmethod
    def _keys(name: str, state: str) -> tuple[str, str, list[str]]:
        outcome = OUTCOMES.get(str(state), str(state).lower())
        counter = files.key(
            _TASKS, f"{_TASKS}_total", {"task": name, "state": outcome}, _TASKS_HELP
        )
        total, buckets = "", []
        if outcome in RAN:
            total = files.key(_RUNTIME, f"{_RUNTIME}_sum", {"task": name}, _RUNTIME_HELP)
            buckets = [
                files.key(
                    _RUNTIME,
                    f"{_RUNTIME}_bucket",
                    {"task": name, "le": floatToGoString(bound)},
                    _RUNTIME_HELP,
                )
                for bound in (*BUCKETS, float("inf"))
            ]
        return counter, total, buckets


class WorkerMetrics:
    """A worker's metrics: its ``meter`` for the executor and the settlement, and the
    ``registry`` a scrape reads (the files of every process, and ``live``).

    The files' directory is made by ``open`` (so a worker that never runs leaves
    nothing behind) and removed by ``close``.

    Args:
        tasks: the worker's registered tasks.
        live: what the worker holds and is now (called at each scrape).
    """

    def __init__(self, tasks: Mapping[str, object], live: Callable[[], Live]) -> None:
        self._owner = os.getpid()
        name = f"taskq-metrics-{self._owner}-{uuid.uuid4().hex[:8]}"
        self.directory = os.path.join(tempfile.gettempdir(), name)
        self.meter = WorkerMeter(self.directory, tasks)
        self.registry = CollectorRegistry(auto_describe=False)
        self._live = live

    def open(self) -> None:
        """Make the directory; before the pool starts, since children write there.

        Raises:
            ConfigurationError: it cannot be made (the temporary directory is not
                writable).
        """
        try:
            os.mkdir(self.directory, 0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot make the metrics directory {self.directory}: {exc.strerror or exc}. "
                "Point TMPDIR at a writable directory."
            ) from exc
        self.registry.register(files.Collector(self.directory))
        self.registry.register(_LiveCollector(self._live))

    def close(self) -> None:
        """Remove the files (in the worker only; a forked child leaves them)."""
        if os.getpid() == self._owner:
            shutil.rmtree(self.directory, ignore_errors=True)


class _LiveCollector(Collector):
    def __init__(self, live: Callable[[], Live]) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        now = self._live()
        for name, value, help_text in (
            ("taskq_worker_active_tasks", now.active, "Tasks running now."),
            (
                "taskq_worker_reserved_tasks",
                now.reserved,
                "Tasks received and waiting for a pool slot or a rate limit.",
            ),
            (
                "taskq_worker_scheduled_tasks",
                now.scheduled,
                "Tasks received, waiting for their ETA.",
            ),
            (
                "taskq_worker_prefetched_messages",
                now.prefetched,
                "Messages leased from the broker and not settled yet.",
            ),
            ("taskq_worker_concurrency", now.concurrency, "How many tasks may run at once."),
            (
                "taskq_worker_start_time_seconds",
                now.started_at,
                "When the worker started (Unix time).",
            ),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        info = GaugeMetricFamily(
            "taskq_worker_info",
            "The worker: node name, pool and taskq version (the value is 1).",
            labels=["hostname", "pool", "version"],
        )
        info.add_metric([now.hostname, now.pool, __version__], 1)
        yield info
