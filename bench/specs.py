"""How each framework's worker is started: one ``Spec`` per row of the tables.

Settings chosen so that rows with the same process count compare like with like,
and otherwise each framework's defaults (see bench/README.md for why):

- taskq: ``-P solo`` (1 process); ``-P threads -c 2`` (1 process, 2 threads);
  ``-P prefork -c 2`` (2 children) when that pool exists; prefetch multiplier 4.
- Celery: ``-P solo`` and ``-P prefork -c 2``, prefetch multiplier 4 (default),
  early acks (default), ``--without-gossip --without-mingle --without-heartbeat``
  (events that taskq does not send).
- Dramatiq: ``-p 1 -t 1`` and ``-p 2 -t 1``: one executing thread per process, as
  in a prefork pool (its default of 8 threads per process only adds GIL contention
  to no-op tasks); default middleware.
- Huey: ``-w 1 -k thread`` (the worker thread inside the consumer process) and
  ``-w 2 -k process``; ``-q`` (its INFO log line per task would be measured too)
  and ``-n`` (no periodic-task check; there are none).
"""

from __future__ import annotations

import dataclasses
import sys

from bench.procs import BIN

QUEUE = "bench"
#: Each framework gets its own Redis database on the bench server.
DB = {"taskq": 1, "celery": 2, "dramatiq": 3, "huey": 4}
FRAMEWORKS = tuple(DB)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One way to run one framework's worker.

    Attributes:
        framework: taskq, celery, dramatiq or huey.
        label: the row's name in the tables.
        processes: processes that execute tasks (a pool's parent that only
            dispatches is not counted).
        pool: the pool arguments.
        children: when set, the worker must show this many child processes,
            else the pool is taken as not available (taskq's prefork, for now).
        probe: start the worker once on an empty queue first, and skip the row
            with the reason when it does not run (a pool that may not exist yet).
    """

    framework: str
    label: str
    processes: int
    pool: tuple[str, ...]
    children: int | None = None
    probe: bool = False

    def argv(self) -> list[str]:
        if self.framework == "taskq":
            # python -m taskq: what the taskq command runs (it patches for -P gevent/eventlet).
            head = [sys.executable, "-m", "taskq", "-A", "bench.apps.taskq_app", "worker"]
            return [*head, "-Q", QUEUE, "-l", "warning", *self.pool]
        if self.framework == "celery":
            quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            head = [str(BIN / "celery"), "-A", "bench.apps.celery_app", "worker"]
            return [*head, "-Q", QUEUE, "-l", "warning", *quiet, *self.pool]
        if self.framework == "dramatiq":
            return [str(BIN / "dramatiq"), "bench.apps.dramatiq_app", "-Q", QUEUE, *self.pool]
        if self.framework == "huey":
            return [str(BIN / "huey_consumer"), "bench.apps.huey_app.huey", "-q", "-n", *self.pool]
        raise ValueError(self.framework)


TASKQ_SOLO = Spec("taskq", "taskq -P solo", 1, ("-P", "solo"))
TASKQ_THREADS = Spec("taskq", "taskq -P threads -c 2", 1, ("-P", "threads", "-c", "2"))
TASKQ_PREFORK = Spec("taskq", "taskq -P prefork -c 2", 2, ("-P", "prefork", "-c", "2"), 2, True)
#: The prefork curve: one child, and one more child than the machine's 2 cores.
TASKQ_PREFORK_1 = Spec("taskq", "taskq -P prefork -c 1", 1, ("-P", "prefork", "-c", "1"), 1, True)
TASKQ_PREFORK_3 = Spec("taskq", "taskq -P prefork -c 3", 3, ("-P", "prefork", "-c", "3"), 3, True)
CELERY_SOLO = Spec("celery", "celery -P solo", 1, ("-P", "solo"))
CELERY_PREFORK = Spec("celery", "celery -P prefork -c 2", 2, ("-P", "prefork", "-c", "2"))
DRAMATIQ_1 = Spec("dramatiq", "dramatiq -p 1 -t 1", 1, ("-p", "1", "-t", "1"))
DRAMATIQ_2 = Spec("dramatiq", "dramatiq -p 2 -t 1", 2, ("-p", "2", "-t", "1"))
HUEY_1 = Spec("huey", "huey -w 1 -k thread", 1, ("-w", "1", "-k", "thread"))
HUEY_2 = Spec("huey", "huey -w 2 -k process", 2, ("-w", "2", "-k", "process"))
TASKQ_ASYNCIO = Spec(
    "taskq", "taskq -P asyncio -c 1000", 1, ("-P", "asyncio", "-c", "1000"), probe=True
)

#: W7, blocking I/O at concurrency 1,000 in one process: each row, its task body for
#: the drain and for the memory phase (bench/apps).
GREEN_C = ("-c", "1000")
TASKQ_GEVENT = Spec("taskq", "taskq -P gevent -c 1000", 1, ("-P", "gevent", *GREEN_C), probe=True)
TASKQ_EVENTLET = Spec(
    "taskq", "taskq -P eventlet -c 1000", 1, ("-P", "eventlet", *GREEN_C), probe=True
)
TASKQ_ASYNCIO_AWAIT = Spec(
    "taskq", "taskq -P asyncio -c 1000 (await)", 1, ("-P", "asyncio", *GREEN_C), probe=True
)
CELERY_GEVENT = Spec("celery", "celery -P gevent -c 1000", 1, ("-P", "gevent", *GREEN_C))
CELERY_EVENTLET = Spec("celery", "celery -P eventlet -c 1000", 1, ("-P", "eventlet", *GREEN_C))
GREEN = (
    (TASKQ_GEVENT, "wait10", "hold"),
    (TASKQ_EVENTLET, "wait10", "hold"),
    (TASKQ_ASYNCIO_AWAIT, "await10", "ahold"),
    (CELERY_GEVENT, "wait10", "hold"),
    (CELERY_EVENTLET, "wait10", "hold"),
)

#: Drain throughput rows (W1, W2): one process, then two.
DRAIN = (
    TASKQ_SOLO,
    CELERY_SOLO,
    DRAMATIQ_1,
    HUEY_1,
    TASKQ_THREADS,
    TASKQ_PREFORK_1,
    TASKQ_PREFORK,
    TASKQ_PREFORK_3,
    CELERY_PREFORK,
    DRAMATIQ_2,
    HUEY_2,
)
#: The configurations the issue names, without the extra one-process rows of the
#: other frameworks (``--drain-rows issue``, the default of ``--quick``).
DRAIN_ISSUE = (
    TASKQ_SOLO,
    TASKQ_THREADS,
    TASKQ_PREFORK_1,
    TASKQ_PREFORK,
    TASKQ_PREFORK_3,
    CELERY_PREFORK,
    DRAMATIQ_2,
    HUEY_2,
)
#: One executing process each: idle latency (W3) and the delayed backlog (W6).
SINGLE = (TASKQ_SOLO, CELERY_SOLO, DRAMATIQ_1, HUEY_1)
