"""How a worker is configured: its options, its node name, the size of its pool."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import TYPE_CHECKING

from taskq.errors import ConfigurationError
from taskq.worker.pools import POOLS
from taskq.worker.pools.base import PoolSettings

if TYPE_CHECKING:
    from taskq.app import App

__all__ = ["ASYNCIO_CONCURRENCY", "WorkerOptions", "expand_hostname", "pool_settings"]

#: Default concurrency of the asyncio, gevent and eventlet pools (a waiting task
#: costs a coroutine or a greenlet, not a thread or a process).
ASYNCIO_CONCURRENCY = 100


@dataclasses.dataclass
class WorkerOptions:
    """How a worker runs; None means "use the app's setting"."""

    queues: list[str] | None = None
    concurrency: int | None = None
    pool: str | None = None
    hostname: str | None = None
    prefetch_multiplier: int | None = None
    shutdown_timeout: float | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # KiB
    time_limit: float | None = None
    soft_time_limit: float | None = None
    autoscale: tuple[int, int] | None = None  # (max, min) prefork children
    task_events: bool | None = None  # -E: send task events (worker_send_task_events)
    without_heartbeat: bool = False  # send no worker events
    heartbeat_interval: float | None = None  # seconds between worker-heartbeat events
    metrics_port: int | None = None  # serve Prometheus metrics (worker_metrics_port)
    metrics_host: str | None = None  # the address they are served on (worker_metrics_host)


def expand_hostname(name: str | None) -> str:
    """Celery's node name: ``%h`` is the host name, ``%n`` its first label."""
    host = socket.gethostname()
    name = name or "taskq@%h"
    return name.replace("%h", host).replace("%n", host.split(".")[0])


def pool_settings(app: App, opts: WorkerOptions) -> PoolSettings:
    """Check the pool name and options against each other and size the pool."""
    conf = app.conf
    name = opts.pool or conf.worker_pool
    if name not in POOLS:
        raise ValueError(f"Unknown pool {name!r}; choose one of {', '.join(POOLS)}.")
    if opts.autoscale:
        if name != "prefork":
            raise ConfigurationError(f"--autoscale needs the prefork pool, not {name!r}.")
        high, low = opts.autoscale
        if not 0 < low <= high:
            raise ConfigurationError(
                f"--autoscale takes MAX,MIN with 0 < MIN <= MAX, got {high},{low}."
            )
    local = [u for u in (app.broker_url, app.backend_url or "") if u.startswith("memory:")]
    if name == "prefork" and local:
        raise ConfigurationError(
            f"The prefork pool runs tasks in child processes, which cannot reach "
            f"{local[0]!r}: it lives inside one process. Use the threads, solo or "
            "asyncio pool, or a redis, amqp or sqlite URL."
        )
    if name == "solo":
        concurrency = 1
    elif name in ("asyncio", "gevent", "eventlet"):
        concurrency = opts.concurrency or conf.worker_concurrency or ASYNCIO_CONCURRENCY
    else:
        concurrency = opts.concurrency or conf.worker_concurrency or os.cpu_count() or 1
    return PoolSettings(
        concurrency=opts.autoscale[0] if opts.autoscale else concurrency,
        max_tasks_per_child=opts.max_tasks_per_child or conf.worker_max_tasks_per_child,
        max_memory_per_child=opts.max_memory_per_child or conf.worker_max_memory_per_child,
        autoscale=opts.autoscale,
    )
