"""The beat scheduler: sends periodic tasks when their schedules fall due.

``Scheduler.tick(now)`` is pure with respect to time: it sends what is due at
``now`` and returns the seconds until the next due entry, so tests drive the clock
instead of sleeping. ``run_beat`` is the loop around it.

Catch-up policy: however many runs of an entry were missed (beat was down, or a
tick came late), a tick sends that entry once, for the latest missed due time, and
the schedule continues from now: the next run is the first due time after ``now``.

High availability: several beat processes may run with a shared ``BeatLock``. Only
the holder of the lock's lease sends; a standby takes over once the lease expires
(``lease_timeout`` seconds after the holder's last renewal, plus at most one poll).
Every run is claimed first under a key made of the entry name and its due time, so
two beats that overlap during a takeover still send each due time once. Beats
should also share one ``KeyValueStore``: a new holder reloads it, so interval
entries continue on the old holder's timetable (crontab and solar entries hand over
exactly even without it, because their due times do not depend on history).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from taskq.beat.locks import BeatLock, LocalBeatLock, RedisBeatLock
from taskq.broker.startup import connect_on_startup
from taskq.errors import BrokerError, ConfigurationError, did_you_mean
from taskq.schedules import Schedule, as_schedule

if TYPE_CHECKING:
    from taskq.app import App

logger = logging.getLogger(__name__)


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(timezone.utc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Entry:
    """One periodic task.

    Attributes:
        name: unique name (the ``beat_schedule`` key); also its key in the store.
        task: the registered task name to send.
        schedule: when it is due.
        args: positional arguments for the task.
        kwargs: keyword arguments for the task.
        options: ``apply_async`` options (queue, priority, expires, ...).
        last_run_at: the due time of the latest run (aware, UTC), None before the
            first. The due time, not the moment of sending, so intervals do not drift.
        total_run_count: runs sent, as far as this scheduler and its store know.
        last_task_id: the id of the task the latest run sent.
        last_sent_at: when the latest run was sent (aware, UTC).
    """

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    last_run_at: datetime | None = None
    total_run_count: int = 0
    last_task_id: str | None = None
    last_sent_at: datetime | None = None


_ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options")


def entries_from_config(beat_schedule: Mapping[str, Mapping[str, Any]]) -> list[Entry]:
    """Entries from Celery's ``beat_schedule`` setting.

    Each value is ``{"task": "proj.tasks.add", "schedule": ..., "args": (...),
    "kwargs": {...}, "options": {...}}``; ``schedule`` is seconds, a timedelta, a
    Schedule (``crontab(...)``, ``solar(...)``, ``every(...)``) or its ``to_dict()``.

    Raises:
        ConfigurationError: naming the entry, for an unknown key, a missing or empty
            ``task``, a missing or bad ``schedule``, or arguments of the wrong type.
    """
    entries = []
    for name, spec in beat_schedule.items():
        where = f"beat_schedule[{name!r}]"
        if not isinstance(name, str) or not isinstance(spec, Mapping):
            raise ConfigurationError(f"{where} must map a name to a dict, got {spec!r}.")
        for key in spec:
            if key not in _ENTRY_KEYS:
                raise ConfigurationError(
                    f"{where} has an unknown key {key!r}.{did_you_mean(str(key), _ENTRY_KEYS)} "
                    f"Known: {', '.join(_ENTRY_KEYS)}."
                )
        task = spec.get("task")
        if not isinstance(task, str) or not task:
            raise ConfigurationError(
                f"{where} needs \"task\": a registered task name such as 'proj.tasks.add'."
            )
        if "schedule" not in spec:
            raise ConfigurationError(f'{where} needs "schedule": seconds, crontab(...), ...')
        try:
            schedule = as_schedule(spec["schedule"])
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc
        args, kwargs, options = (
            spec.get("args", ()),
            spec.get("kwargs", {}),
            spec.get("options", {}),
        )
        if not isinstance(args, (list, tuple)):
            raise ConfigurationError(f'{where}: "args" must be a list or tuple, got {args!r}.')
        for key, value in (("kwargs", kwargs), ("options", options)):
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{where}: {key!r} must be a dict, got {value!r}.")
        entries.append(Entry(name, task, schedule, tuple(args), dict(kwargs), dict(options)))
    return entries


# -- where progress is kept --------------------------------------------------------------


class ScheduleStore(Protocol):
    """Keeps each entry's progress across restarts and takeovers."""

    def load(self) -> dict[str, dict[str, Any]]:
        """``{name: {"last_run_at": aware datetime, "total_run_count": int}}``, plus
        ``last_task_id``, ``last_sent_at`` and ``sent_by`` where recorded."""
        ...

    def save(self, name: str, last_run_at: datetime, total_run_count: int, **run: Any) -> None:
        """Record an entry's progress after a run; ``run`` may add ``last_task_id``,
        ``last_sent_at`` (aware datetime) and ``sent_by`` (the beat's owner id)."""
        ...


class MemoryStore:
    """Progress in a dict, lost on exit. Thread-safe; schedulers may share one."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(state) for name, state in self._data.items()}

    def save(self, name: str, last_run_at: datetime, total_run_count: int, **run: Any) -> None:
        with self._lock:
            self._data[name] = {
                "last_run_at": last_run_at,
                "total_run_count": total_run_count,
                **run,
            }


class KeyValueBackend(Protocol):
    """The result backend primitives ``KeyValueStore`` needs (``taskq.backends.base``)."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, expires: float | None) -> None: ...


class KeyValueStore:
    """Progress in a result backend, so it outlives the process and beats can share it.

    One key per entry, ``<prefix>entry-<name>``, holds JSON ``{"last_run_at": ISO
    8601, "total_run_count": n, "last_task_id": id, "last_sent_at": ISO 8601,
    "sent_by": owner}`` (what ``taskq beat status`` shows); ``<prefix>entries`` lists the names, since the
    primitives cannot scan. Nothing expires. Unreadable state is logged and ignored
    (the entry then behaves as never run).
    """

    def __init__(self, backend: KeyValueBackend, key_prefix: str = "taskq-beat-") -> None:
        self.backend = backend
        self.key_prefix = key_prefix
        self._indexed: set[str] = set()

    def load(self) -> dict[str, dict[str, Any]]:
        names = self._read_index()
        self._indexed = set(names)
        states = {}
        for name in names:
            raw = self.backend.get(f"{self.key_prefix}entry-{name}")
            if raw is None:
                continue
            try:
                data = json.loads(raw)
                last = _utc(datetime.fromisoformat(data["last_run_at"]), "last_run_at")
                count = int(data["total_run_count"])
                sent = data.get("last_sent_at")
                run = {
                    "last_task_id": data.get("last_task_id"),
                    "last_sent_at": _utc(datetime.fromisoformat(sent), "sent") if sent else None,
                    "sent_by": data.get("sent_by"),
                }
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("Ignoring unreadable beat state of %r: %s", name, exc)
                continue
            recorded = {k: v for k, v in run.items() if v is not None}
            states[name] = {"last_run_at": last, "total_run_count": count, **recorded}
        return states

    def save(self, name: str, last_run_at: datetime, total_run_count: int, **run: Any) -> None:
        state: dict[str, Any] = {
            "last_run_at": last_run_at.isoformat(),
            "total_run_count": total_run_count,
        }
        for key, value in run.items():
            state[key] = value.isoformat() if isinstance(value, datetime) else value
        self.backend.set(f"{self.key_prefix}entry-{name}", json.dumps(state).encode(), None)
        if name not in self._indexed:
            names = self._read_index()
            if name not in names:
                names.append(name)
                self.backend.set(f"{self.key_prefix}entries", json.dumps(names).encode(), None)
            self._indexed = set(names)

    def _read_index(self) -> list[str]:
        raw = self.backend.get(f"{self.key_prefix}entries")
        try:
            names = json.loads(raw) if raw is not None else []
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            logger.warning("Ignoring the unreadable beat index %sentries", self.key_prefix)
            return []
        return names


# -- the scheduler -----------------------------------------------------------------------


class Scheduler:
    """Sends each entry's task when its schedule is due; see the module docstring
    for the catch-up policy and high availability. One thread ticks it.

    Args:
        entries: the periodic tasks; names must be unique.
        send: publishes one entry's task and returns its id (kept as the entry's
            ``last_task_id``). If it raises, the error is logged and the run is
            retried on the next tick.
        store: where progress is kept; loaded on the first tick as holder.
        tz: the zone crontab fields are read in (unless a crontab names its own).
        lock: several beats share one to decide who sends; None sends always.
        max_interval: the longest ``tick`` asks to sleep, in seconds.
        lease_timeout: the lock lease's ttl; it is renewed every tick, and ticks
            come at least every ``lease_timeout / 3`` seconds.
        owner: this beat's id in the lock (default host:pid:random).
        clock: the time used when ``tick`` is called without ``now``.
    """

    def __init__(
        self,
        entries: Iterable[Entry],
        *,
        send: Callable[[Entry], str | None],
        store: ScheduleStore,
        tz: tzinfo,
        lock: BeatLock | None = None,
        max_interval: float = 5.0,
        lease_timeout: float = 25.0,
        owner: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.entries: dict[str, Entry] = {}
        for entry in entries:
            if entry.name in self.entries:
                raise ConfigurationError(f"Two beat entries are named {entry.name!r}.")
            if entry.last_run_at is not None:
                entry.last_run_at = _utc(entry.last_run_at, f"{entry.name} last_run_at")
            self.entries[entry.name] = entry
        for name, value in (("max_interval", max_interval), ("lease_timeout", lease_timeout)):
            if not value > 0:
                raise ConfigurationError(f"Scheduler {name} must be positive, got {value!r}.")
        self.send, self.store, self.tz, self.lock, self.clock = send, store, tz, lock, clock
        self.max_interval = max_interval
        self.lease_timeout = lease_timeout
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._started: datetime | None = None  # entries that never ran count from here
        self._leader: bool | None = None  # None until the first tick asks the lock
        self._loaded = False
        self._claimed: dict[str, str] = {}  # entry name -> due time claimed, not yet sent

    @property
    def is_leader(self) -> bool:
        """True when the latest tick held the lock (always, without a lock)."""
        return bool(self._leader)

    def tick(self, now: datetime | None = None) -> float:
        """Send every due entry once; return the seconds until the next one is due.

        Args:
            now: the current time (aware); None asks ``clock``.

        Returns:
            Seconds to sleep: until the next due time, at most ``max_interval`` (and
            ``lease_timeout / 3`` with a lock, to renew the lease in time).
        """
        now = _utc(now if now is not None else self.clock(), "now")
        if self._started is None:
            self._started = now
        cap = self.max_interval
        if self.lock is not None:
            cap = min(cap, self.lease_timeout / 3)
        if not self._hold_lock():
            return cap
        if not self._loaded:
            self._load()
        wake = now + timedelta(seconds=cap)
        for entry in self.entries.values():
            try:
                due = self._apply(entry, now)
            except Exception:  # one broken entry, store or broker must not stop the rest
                logger.exception("Scheduler: %s (%s) failed; retrying", entry.name, entry.task)
                continue
            wake = min(wake, due)
        return max(0.0, (wake - now).total_seconds())

    def close(self) -> None:
        """Release the lock so a standby takes over at once."""
        if self.lock is not None and self._leader:
            try:
                self.lock.release(self.owner)
            except Exception:
                logger.exception("Scheduler: could not release the beat lock; it will expire")
        self._leader = False

    def _hold_lock(self) -> bool:
        if self.lock is None:
            self._leader = True
            return True
        try:
            held = self.lock.acquire_or_renew(self.owner, self.lease_timeout)
        except Exception:  # leadership that cannot be confirmed is not leadership
            logger.exception("Scheduler: cannot reach the beat lock; not sending")
            held = False
        if held and not self._leader:
            logger.info("Scheduler: %s holds the beat lock and sends due tasks", self.owner)
            self._loaded = False  # another beat may have run entries meanwhile
        elif not held and self._leader:
            logger.warning("Scheduler: %s lost the beat lock; standing by", self.owner)
        elif not held and self._leader is None:
            logger.info("Scheduler: another beat holds the lock; %s stands by", self.owner)
        self._leader = held
        return held

    def _load(self) -> None:
        try:
            saved = self.store.load()
        except Exception:
            logger.exception("Scheduler: could not load beat state; using what is in memory")
            return
        for name, state in saved.items():
            entry = self.entries.get(name)
            if entry is None:
                continue
            last = state.get("last_run_at")
            if isinstance(last, datetime) and (
                entry.last_run_at is None or _utc(last, name) > _utc(entry.last_run_at, name)
            ):
                entry.last_run_at = _utc(last, name)
            count = state.get("total_run_count")
            if isinstance(count, int):
                entry.total_run_count = max(entry.total_run_count, count)
        self._loaded = True

    def _apply(self, entry: Entry, now: datetime) -> datetime:
        """Send ``entry`` if due; return when to look at it again (UTC)."""
        assert self._started is not None  # set by tick
        last = (entry.last_run_at or self._started).astimezone(self.tz)
        due = entry.schedule.latest_due(last, now.astimezone(self.tz))
        if due is not None:
            self._run(entry, _utc(due, "due time"))
            last = due
        return _utc(entry.schedule.next_after(last), "next due time")

    def _run(self, entry: Entry, due: datetime) -> None:
        key = due.isoformat()
        if self.lock is not None and self._claimed.get(entry.name) != key:
            # The claim must outlive every beat's chance to see ``due`` as the latest
            # due time: until the next one, plus slack for clocks that disagree.
            following = _utc(entry.schedule.next_after(due.astimezone(self.tz)), "due time")
            ttl = (following - due).total_seconds() + 2 * self.lease_timeout
            if not self.lock.claim_tick(entry.name, key, ttl):
                logger.debug("Scheduler: %s at %s was sent by another beat", entry.name, key)
                entry.last_run_at = due
                return
            self._claimed[entry.name] = key  # a failed send is retried without a new claim
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        task_id = self.send(entry)
        self._claimed.pop(entry.name, None)
        entry.last_run_at = due
        entry.total_run_count += 1
        entry.last_task_id = task_id if isinstance(task_id, str) else None
        entry.last_sent_at = self.clock()
        try:
            self.store.save(
                entry.name,
                due,
                entry.total_run_count,
                last_task_id=entry.last_task_id,
                last_sent_at=entry.last_sent_at,
                sent_by=self.owner,
            )
        except Exception:  # sent is sent: after a restart it may run once more, no worse
            logger.exception("Scheduler: sent %s but could not save its progress", entry.name)


def wait_for_broker(app: App, stop: threading.Event) -> bool:
    """Connect to the app's broker before the first tick, retrying while it is down
    (``broker_connection_retry_on_startup``, ``broker_connection_max_retries``).

    Declares the default queue as the app's queue table says (as the worker and
    the producers do), so that it is the first thing that needs the broker. Returns
    False when ``stop`` was set while waiting.

    Raises:
        BrokerError: the broker stayed unreachable.
    """
    return connect_on_startup(
        lambda: app.broker.declare([app.broker.queues[app.conf.task_default_queue]]),
        url=app.broker_url,
        conf=app.conf,
        stop=stop,
        who="beat",
    )


def run_beat(scheduler: Scheduler, stop: threading.Event) -> None:
    """Tick until ``stop`` is set, sleeping what each tick asks; then release the lock.

    A tick that raises is logged and retried after ``max_interval``: a flaky lock,
    store or broker must not end the beat.
    """
    logger.info("beat: Starting...")
    try:
        while not stop.is_set():
            try:
                delay = scheduler.tick()
            except Exception:
                logger.exception("beat: tick failed; retrying in %s s", scheduler.max_interval)
                delay = scheduler.max_interval
            logger.debug("beat: Waking up in %.2f s", delay)
            stop.wait(delay)
    finally:
        scheduler.close()


def shared_lock(app: App) -> RedisBeatLock | None:
    """The Redis lease beats share (on the backend's server, else the broker's), or
    None: then a single beat runs with a local lock.

    Its keys take the ``key_prefix`` of that server's transport options, as the
    app's other keys do, so projects kept apart on one Redis by their prefix keep
    separate leases.
    """
    conf = app.conf
    for url, options in (
        (app.backend_url, conf.result_backend_transport_options),
        (app.broker_url, conf.broker_transport_options),
    ):
        if url and url.startswith(("redis://", "rediss://")):
            prefix = str(options.get("key_prefix", ""))
            return RedisBeatLock(url, key_prefix=f"{prefix}taskq-beat:")
    return None


def scheduler_for(app: App) -> Scheduler:
    """The scheduler for an app's ``beat_schedule`` and ``add_periodic_task`` entries.

    Progress persists in the result backend when there is one (so restarts keep
    last-run times). When the broker or the backend is Redis, beats share a Redis
    lease, so several may run at once and exactly one sends (high availability);
    otherwise run a single beat. Logs a warning for each Celery setting taskq will
    not honour (``Settings.unimplemented``).
    """
    conf = app.conf
    app.finalize()  # handlers may add periodic tasks (Celery's on_after_configure)
    for line in conf.unimplemented():
        logger.warning(line)
    lock: BeatLock = shared_lock(app) or LocalBeatLock()
    backend = app.results.backend
    store: ScheduleStore = KeyValueStore(backend) if backend is not None else MemoryStore()
    producer = app.producer

    def send(entry: Entry) -> str:
        return producer.send_task(entry.task, entry.args, entry.kwargs, entry.options)

    return Scheduler(
        entries_from_config(app.periodic_tasks),
        send=send,
        store=store,
        tz=ZoneInfo(conf.timezone),
        lock=lock,
        max_interval=conf.beat_max_loop_interval,
        lease_timeout=conf.beat_lease_timeout,
    )


def start_beat_process(app: App) -> Any:
    """Run beat in a child process (``taskq worker -B``); stop it with SIGTERM.

    A separate process, as Celery does, so the scheduler never shares locks or
    sockets with the worker's pool.
    """
    import billiard

    process = billiard.Process(target=_beat_child, args=(app,), name="taskq-beat", daemon=True)
    process.start()
    return process


def _beat_child(app: App) -> None:
    import signal

    app.reset_connections()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheduler = scheduler_for(app)
    try:
        connected = wait_for_broker(app, stop)
    except BrokerError as exc:
        logger.error("beat: %s", exc)
        return
    if connected:
        run_beat(scheduler, stop)
