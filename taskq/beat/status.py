"""What beat has been doing, for a person: ``beat_status(app)`` and ``taskq beat status``.

Each periodic entry with its schedule, when it runs next, when it last ran, the
id of the task that run sent and, from the result backend, that task's state and
run time; and which beat holds the lease. It reads what a running beat records
(``KeyValueStore`` in the result backend, the lease in Redis: see
``taskq.beat.scheduler``), so it works from any machine that reaches them, while
beat runs or not. Without a result backend nothing is recorded across processes
and only the schedule is shown.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from taskq.beat.scheduler import KeyValueStore, entries_from_config, shared_lock

if TYPE_CHECKING:
    from taskq.app import App


@dataclasses.dataclass(frozen=True)
class EntryStatus:
    """One periodic entry as ``taskq beat status`` shows it (times aware, UTC)."""

    name: str
    task: str
    schedule: str
    next_run_at: datetime
    last_run_at: datetime | None = None
    last_sent_at: datetime | None = None
    last_task_id: str | None = None
    last_state: str | None = None
    last_runtime: float | None = None
    total_run_count: int = 0
    sent_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            k: v.isoformat() if isinstance(v, datetime) else v
            for k, v in dataclasses.asdict(self).items()
        }


@dataclasses.dataclass(frozen=True)
class BeatStatus:
    """Every entry, and who holds the beat lease (``lease`` says what kind it is)."""

    entries: list[EntryStatus]
    lease: str
    holder: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "lease": self.lease,
            "holder": self.holder,
            "entries": [e.as_dict() for e in self.entries],
        }


def beat_status(app: App, now: datetime | None = None) -> BeatStatus:
    """Read what beat recorded for ``app``'s periodic entries.

    Raises:
        ConfigurationError: a periodic entry is malformed (as beat would say).
        BackendError: the result backend or the lease's Redis cannot be read.
    """
    app.finalize()  # as beat does: handlers may add periodic tasks (on_after_configure)
    now = now or datetime.now(timezone.utc)
    tz = ZoneInfo(app.conf.timezone)
    backend = app.results.backend
    saved = KeyValueStore(backend).load() if backend is not None else {}
    entries = []
    for entry in entries_from_config(app.periodic_tasks):
        run = saved.get(entry.name, {})
        last = run.get("last_run_at")
        base = (last or now).astimezone(tz)
        status = EntryStatus(
            name=entry.name,
            task=entry.task,
            schedule=repr(entry.schedule),
            next_run_at=entry.schedule.next_after(base).astimezone(timezone.utc),
            last_run_at=last,
            last_sent_at=run.get("last_sent_at"),
            last_task_id=run.get("last_task_id"),
            total_run_count=int(run.get("total_run_count") or 0),
            sent_by=run.get("sent_by"),
        )
        if status.last_task_id and backend is not None:
            meta = backend.meta(status.last_task_id)
            runtime = meta.get("runtime")
            status = dataclasses.replace(
                status,
                last_state=str(meta.get("status")),
                last_runtime=float(runtime) if isinstance(runtime, (int, float)) else None,
            )
        entries.append(status)
    lock = shared_lock(app)
    if lock is None:
        return BeatStatus(entries, "local (one beat process; no shared lease)", None)
    try:
        holder = lock.holder()
    finally:
        lock.close()
    return BeatStatus(entries, "redis", holder)
