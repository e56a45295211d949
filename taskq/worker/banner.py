"""The worker's start-up banner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskq.urls import mask_url
from taskq.version import __version__

if TYPE_CHECKING:
    from taskq.worker.worker import Worker


def describe_url(url: str | None) -> str:
    """A URL for display: password masked, SQLite shown as an absolute file path."""
    if url is None:
        return "disabled"
    if url.startswith("sqlite:"):
        from taskq.broker.sqlite import sqlite_path

        return f"sqlite (file {sqlite_path(url).resolve()})"
    if url.startswith("memory:"):
        return url
    return mask_url(url)


def banner(worker: Worker) -> str:
    app = worker.app
    # Not the built-ins (taskq.map, celery.chord_unlock, ...).
    tasks = sorted(name for name in app.tasks if not name.startswith(("taskq.", "celery.")))
    lines = [
        f"taskq {__version__}  {worker.hostname}",
        f"  app:         {app.main or '__main__'}",
        f"  broker:      {describe_url(app.broker_url)}",
        f"  results:     {describe_url(app.backend_url)}",
        f"  concurrency: {worker.pool.describe()}",
        f"  queues:      {', '.join(worker.queues)}",
        "  [tasks]",
        *(f"    . {name}" for name in tasks),
    ]
    if not tasks:
        lines.append("    (none registered: is your tasks module imported?)")
    return "\n".join(lines)
