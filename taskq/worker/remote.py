"""The worker as remote control sees it: ``RemoteHandle`` implements
``taskq.control.WorkerHandle`` over a running ``Worker``.

It reads and steers the worker's parts through their public methods, from the
control thread: snapshots of the pool (``running``, ``waiting``) and of the
holding area (``held_requests``, ``parked_requests``); rate and time limits
through the ``Policies``; the queues through the ``Consumer`` (which applies the
change on its own thread, before its next fetch); pool size through the pool and
the ``Window``; revokes through the ``Consumer`` (never start) and
``Worker.terminate`` (stop the running ones); shutdown through ``Worker.stop``.
A pool that cannot do something (grow a solo pool, autoscale a pool started
without ``--autoscale``) answers with an error saying why. A pool whose children
consume on their own (prefork on Redis) gets each change too (``forward``: revoke,
rate and time limits, queues), and replays it in each child's own handle.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from typing import TYPE_CHECKING, Any

from taskq.config import Settings
from taskq.control import CommandError, Scheduled, TaskInfo
from taskq.errors import ConfigurationError
from taskq.urls import mask_url

if TYPE_CHECKING:
    from taskq.worker.request import Request
    from taskq.worker.worker import Worker

log = logging.getLogger("taskq.worker")

#: Settings whose values are never shown (they may hold secrets).
_SECRET_WORDS = ("password", "secret", "token", "key", "signature")


def task_info(request: Request, hostname: str) -> TaskInfo:
    message, delivery = request.message, request.delivery
    headers = delivery.envelope.headers
    return TaskInfo(
        id=message.id,
        name=message.task,
        args=list(message.args),
        kwargs=dict(message.kwargs),
        argsrepr=str(headers.get("argsrepr") or repr(message.args)),
        kwargsrepr=str(headers.get("kwargsrepr") or repr(message.kwargs)),
        hostname=hostname,
        time_start=request.time_start,
        acknowledged=request.settled,
        delivery_info={
            "exchange": "",
            "routing_key": delivery.queue,
            "priority": delivery.envelope.properties.get("priority"),
            "redelivered": delivery.delivery_count > 1,
        },
        worker_pid=request.worker_pid or (os.getpid() if request.time_start else None),
    )


def shown_settings(conf: Settings, with_defaults: bool) -> dict[str, Any]:
    """The settings as ``inspect conf`` shows them: URLs masked, secrets hidden,
    only those changed from the defaults unless ``with_defaults``."""
    defaults = Settings().as_dict()
    out: dict[str, Any] = {}
    for name, value in conf.as_dict().items():
        if not with_defaults and defaults.get(name) == value:
            continue
        if isinstance(value, str) and "://" in value:
            value = mask_url(value)
        elif any(word in name for word in _SECRET_WORDS) and value:
            value = "********"
        out[name] = value if _jsonable(value) else repr(value)
    return out


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


class RemoteHandle:
    """``WorkerHandle`` for ``worker`` (see the module docstring)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.hostname = worker.hostname
        #: Rate limits set through remote control, as given (``inspect registered``).
        self._rate_limits: dict[str, str | None] = {}

    def active(self) -> list[TaskInfo]:
        return [task_info(r, self.hostname) for r in self.worker.pool.running()]

    def reserved(self) -> list[TaskInfo]:
        waiting = self.worker.pool.waiting() + self.worker.holding.parked_requests()
        return [task_info(r, self.hostname) for r in waiting]

    def scheduled(self) -> list[Scheduled]:
        return [
            Scheduled(
                eta=r.message.eta.isoformat() if r.message.eta else None,
                priority=r.delivery.envelope.properties.get("priority"),
                task=task_info(r, self.hostname),
            )
            for r in self.worker.holding.held_requests()
        ]

    def stats(self) -> dict[str, Any]:
        worker, pool = self.worker, self.worker.pool
        usage = resource.getrusage(resource.RUSAGE_SELF)
        pids = getattr(pool, "pids", None)
        limits = worker.policies.default
        return {
            "pid": os.getpid(),
            "clock": worker.events.clock.value,
            "uptime": round(time.time() - worker.started_at),
            "total": worker.settlement.totals(),
            "prefetch_count": worker.window.capacity,
            "pool": {
                "implementation": f"taskq:{worker.pool_name}",
                "max-concurrency": pool.concurrency,
                "processes": pids() if callable(pids) else [os.getpid()],
                "max-tasks-per-child": worker.app.conf.worker_max_tasks_per_child or "N/A",
                "timeouts": [limits.soft_time_limit or 0, limits.time_limit or 0],
            },
            "broker": {
                "transport": worker.app.broker_url.split("://", 1)[0],
                "hostname": mask_url(worker.app.broker_url),
            },
            "rusage": {
                "utime": usage.ru_utime,
                "stime": usage.ru_stime,
                "maxrss": usage.ru_maxrss,
                "minflt": usage.ru_minflt,
                "majflt": usage.ru_majflt,
                "nvcsw": usage.ru_nvcsw,
                "nivcsw": usage.ru_nivcsw,
            },
            "events": worker.events.counts(),
            "task_events": worker.events.task_events,
        }

    def registered(self) -> dict[str, dict[str, Any]]:
        """Each task with its rate limit (as declared, or as remote control set it)
        and the time limits and ``acks_late`` this worker applies."""
        policies, shown = self.worker.policies, {}
        for name, task in self.worker.app.tasks.items():
            if name.startswith("taskq."):
                continue
            policy = policies[name]
            shown[name] = {
                "rate_limit": self._rate_limits.get(name, task.rate_limit),
                "time_limit": policy.time_limit,
                "soft_time_limit": policy.soft_time_limit,
                "acks_late": policy.acks_late,
            }
        return shown

    def conf(self, with_defaults: bool) -> dict[str, Any]:
        return shown_settings(self.worker.app.conf, with_defaults)

    def clock(self) -> int:
        return int(self.worker.events.clock.value)

    def revoked(self) -> list[str]:
        return self.worker.consumer.revoked_ids()

    def revoke(self, ids: list[str], terminate: bool, signum: int) -> list[str]:
        self.worker.consumer.revoke(ids)
        self._pass_on("revoke", ids, False, signum)
        return self.worker.terminate(ids, signum) if terminate else []

    def queues(self) -> list[str]:
        return list(self.worker.consumer.queues)

    def add_queue(self, name: str) -> bool:
        if not name or not isinstance(name, str):
            raise CommandError(f"add_consumer needs a queue name, got {name!r}.")
        try:
            added = self.worker.consumer.add_queue(name)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        if added:
            self._pass_on("add_queue", name)
        return added

    def cancel_queue(self, name: str) -> bool:
        try:
            cancelled = self.worker.consumer.cancel_queue(name)
            if cancelled:
                self._pass_on("cancel_queue", name)
            return cancelled
        except ValueError:
            raise CommandError(
                f"{name!r} is the only queue {self.hostname} consumes; add another first "
                "(add_consumer) or shut the worker down."
            ) from None

    def resize_pool(self, delta: int) -> int:
        pool = self.worker.pool
        try:
            size = pool.resize(delta) if delta else pool.concurrency
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.worker.window.set_concurrency(size)
        return size

    def autoscale(self, high: int, low: int) -> tuple[int, int]:
        scale = getattr(self.worker.pool, "autoscale", None)
        if not callable(scale):
            raise CommandError(
                f"Autoscale needs the prefork pool started with --autoscale; "
                f"{self.hostname} runs the {self.worker.pool_name} pool."
            )
        try:
            bounds: tuple[int, int] = scale(high, low)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.worker.window.set_concurrency(self.worker.pool.concurrency)
        return bounds

    def set_rate_limit(self, task_name: str, rate: str | None) -> None:
        self._task(task_name)
        try:
            self.worker.policies.set_rate_limit(task_name, rate)
        except ConfigurationError as exc:
            raise CommandError(f"Invalid rate limit for {task_name}: {exc}") from None
        self._rate_limits[task_name] = rate
        self._pass_on("set_rate_limit", task_name, rate)

    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None:
        self._task(task_name)
        for what, value in (("soft", soft), ("hard", hard)):
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise CommandError(f"The {what} time limit must be seconds > 0, got {value!r}.")
        self.worker.policies.set_time_limits(task_name, soft, hard)
        self._pass_on("set_time_limit", task_name, soft, hard)

    def set_task_events(self, enabled: bool) -> bool:
        """Turn task events on or off: the dispatcher, and the pool (whose children
        report what the events need)."""
        events = self.worker.events
        changed = events.enable_task_events() if enabled else events.disable_task_events()
        if changed:
            self.worker.pool.set_task_events(enabled)
            log.info("Task events %s by remote control", "enabled" if enabled else "disabled")
        return changed

    def _pass_on(self, method: str, *args: Any) -> None:
        """Repeat a change in the pool's children when they consume on their own
        (prefork on Redis): each applies it to its own consumer and policies."""
        forward = getattr(self.worker.pool, "forward", None)
        if forward is not None:
            forward(method, args)

    def send_heartbeat(self) -> None:
        self.worker.events.heartbeat_now()

    def shutdown(self) -> None:
        self.worker.stop()

    def _task(self, name: str) -> Any:
        task = self.worker.app.tasks.get(name)
        if task is None:
            known = ", ".join(sorted(self.registered())) or "(none)"
            raise CommandError(f"unknown task {name!r} on {self.hostname}. Registered: {known}.")
        return task
