"""``taskq events``: the event stream as a live terminal view, or dumped raw.

``live`` draws the workers (alive or lost, pool load, processed) and the most
recent tasks (state, name, worker, runtime, args, result or exception) with
rich, redrawn a few times a second from a ``FleetState``. ``dump`` prints each
event as one JSON object per line. Both call ``wakeup`` once they listen: the CLI
hands in ``app.control.heartbeat``, which asks the workers for a heartbeat at once
(Celery's receivers do too), so the workers show up without waiting 2 s.

rich is an optional extra (``pip install 'taskq[monitor]'``): a worker has no use
for a terminal UI, and ``--dump`` needs nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskq.config import broker_url_of
from taskq.errors import ConfigurationError
from taskq.events.connection import connect
from taskq.events.receiver import EventReceiver
from taskq.events.state import FleetState, TaskState, WorkerState

if TYPE_CHECKING:
    from rich.console import RenderableType

    from taskq.config import Settings

#: Tasks shown in the live view.
ROWS = 25
_STATE_STYLE = {
    "SUCCESS": "green",
    "FAILURE": "bold red",
    "RETRY": "yellow",
    "REVOKED": "magenta",
    "REJECTED": "magenta",
    "STARTED": "cyan",
    "RECEIVED": "blue",
    "PENDING": "dim",
}


Wakeup = Callable[[], object]


def receiver(
    conf: Settings, handler: Callable[[dict[str, Any]], object], wakeup: Wakeup | None = None
) -> EventReceiver:
    """An ``EventReceiver`` on the broker of ``conf`` that calls ``wakeup`` once it
    listens."""
    url = broker_url_of(conf)

    def connection() -> Any:
        return connect(url, connect_timeout=conf.broker_connection_timeout, what="Events")

    connection()  # says now, not in a thread, when the broker cannot broadcast
    return EventReceiver(
        connection,
        handler,
        queue_prefix=conf.event_queue_prefix,
        queue_ttl=conf.event_queue_ttl,
        queue_expires=conf.event_queue_expires,
        exchange_name=conf.event_exchange,
        wakeup=wakeup,
    )


def dump(
    conf: Settings,
    stop: threading.Event,
    echo: Callable[[str], None],
    limit: int | None = None,
    wakeup: Wakeup | None = None,
) -> None:
    """Print each event as a JSON line until ``stop`` (or ``limit`` events)."""
    seen = 0

    def handle(event: dict[str, Any]) -> None:
        nonlocal seen
        echo(json.dumps(event, sort_keys=True, default=str))
        seen += 1
        if limit is not None and seen >= limit:
            stop.set()

    receiver(conf, handle, wakeup).run(stop)


def live(
    conf: Settings,
    stop: threading.Event,
    max_tasks: int = 10_000,
    refresh: float = 4.0,
    wakeup: Wakeup | None = None,
) -> None:
    """Draw the fleet until ``stop`` or Ctrl-C."""
    try:
        from rich.live import Live
    except ImportError:
        raise ConfigurationError(
            "The live view needs rich: pip install 'taskq[monitor]' (or use --dump)."
        ) from None
    fleet = FleetState(max_tasks=max_tasks)
    events = receiver(conf, fleet.apply, wakeup)
    thread = threading.Thread(target=events.run, args=(stop,), name="taskq-events", daemon=True)
    thread.start()
    try:
        with Live(render(fleet), refresh_per_second=refresh, screen=False) as screen:
            while not stop.wait(1.0 / refresh):
                screen.update(render(fleet))
    finally:
        stop.set()
        thread.join(2)


def render(fleet: FleetState, rows: int = ROWS, now: float | None = None) -> RenderableType:
    """The workers table above the tasks table."""
    from rich.console import Group
    from rich.table import Table

    now = now or time.time()
    workers = Table(title="Workers", expand=True)
    for column in ("worker", "status", "active", "processed", "load", "software", "heartbeat"):
        workers.add_column(column)
    for worker in fleet.workers():
        workers.add_row(*_worker_row(worker, now))
    counts = fleet.counts()
    summary = ", ".join(f"{state.lower()} {n}" for state, n in sorted(counts.items()))
    tasks = Table(title=f"Tasks ({summary or 'none yet'})", expand=True)
    for column in ("state", "task", "id", "worker", "received", "runtime", "args", "result"):
        tasks.add_column(column, overflow="ellipsis", no_wrap=True)
    for task in fleet.tasks(rows):
        tasks.add_row(*_task_row(task))
    return Group(workers, tasks)


def _worker_row(worker: WorkerState, now: float) -> list[str]:
    alive = worker.alive(now)
    status = (
        "[green]online[/]" if alive else ("[dim]offline[/]" if worker.offline else "[red]lost[/]")
    )
    load = " ".join(f"{x:.2f}" for x in worker.loadavg) if worker.loadavg else "-"
    ago = f"{now - worker.last_heartbeat:.0f}s ago" if worker.last_heartbeat else "-"
    software = f"{worker.sw_ident or '?'} {worker.sw_ver or ''}".strip()
    return [worker.hostname, status, str(worker.active), str(worker.processed), load, software, ago]


def _task_row(task: TaskState) -> list[str]:
    style = _STATE_STYLE.get(task.state, "")
    when = datetime.fromtimestamp(task.received).strftime("%H:%M:%S") if task.received else "-"
    runtime = f"{task.runtime:.3f}s" if task.runtime is not None else "-"
    outcome = task.exception if task.state in ("FAILURE", "RETRY") else task.result
    return [
        f"[{style}]{task.state}[/]" if style else task.state,
        task.name or "?",
        task.uuid,
        task.worker or "-",
        when,
        runtime,
        f"{task.args or ''} {task.kwargs or ''}".strip() or "-",
        outcome or "-",
    ]
