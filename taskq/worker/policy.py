"""One resolved policy per task: "the task's setting, else the worker's, else the app's".

A worker resolves every registered task's policy once at start (``Policies``),
and every part that used to ask the task and then the settings (the consumer,
the executor, the pools, time limits) reads the policy instead. A task the
worker does not know gets the app's defaults. Changing a task's options or the
settings after a worker started does not change that worker; remote control's
``rate_limit`` and ``time_limit`` change its policies (``set_rate_limit``,
``set_time_limits``).

Time limits keep one more level: a message's own ``timelimit`` header (set per
call) wins over the policy (see ``limits_for``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskq.errors import ConfigurationError
from taskq.worker.ratelimit import parse_rate

if TYPE_CHECKING:
    from taskq.config import Settings
    from taskq.message import TaskMessage
    from taskq.task import Task

__all__ = ["Policies", "Policy"]


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the worker treats the messages of one task.

    Attributes:
        acks_late: acknowledge after the task ran (else when it starts).
        reject_on_worker_lost: redeliver when the process running it died.
        track_started: record STARTED before running it.
        ignore_result: None: store results unless the message says not to;
            True/False: the task's own choice (True also when the message asks).
        time_limit, soft_time_limit: seconds, None for none.
        rate: tasks per second on this worker, None for no limit.
    """

    acks_late: bool
    reject_on_worker_lost: bool
    track_started: bool
    ignore_result: bool | None
    time_limit: float | None
    soft_time_limit: float | None
    rate: float | None

    @classmethod
    def resolve(
        cls,
        task: Task[Any, Any] | None,
        conf: Settings,
        worker_soft: float | None = None,
        worker_hard: float | None = None,
    ) -> Policy:
        """The policy of ``task`` (None: a task this worker does not have)."""

        def own(name: str) -> Any:
            return getattr(task, name) if task is not None else None

        def either(name: str, default: Any) -> Any:
            value = own(name)
            return default if value is None else value

        try:
            rate = parse_rate(either("rate_limit", conf.task_default_rate_limit))
        except ConfigurationError as exc:
            raise ConfigurationError(f"Task {getattr(task, 'name', '?')!r}: {exc}") from None
        return cls(
            acks_late=bool(either("acks_late", conf.task_acks_late)),
            reject_on_worker_lost=bool(
                either("reject_on_worker_lost", conf.task_reject_on_worker_lost)
            ),
            track_started=bool(either("track_started", conf.task_track_started)),
            ignore_result=own("ignore_result"),
            time_limit=_first(own("time_limit"), worker_hard, conf.task_time_limit),
            soft_time_limit=_first(own("soft_time_limit"), worker_soft, conf.task_soft_time_limit),
            rate=rate,
        )

    def ignores_result(self, message_says: bool, conf: Settings) -> bool:
        """Whether to skip storing a result: the task's choice (a message asking to
        ignore it still wins), else the message's or the app's."""
        if self.ignore_result is not None:
            return self.ignore_result or message_says
        return message_says or conf.task_ignore_result

    def limits_for(self, message: TaskMessage) -> tuple[float | None, float | None]:
        """The ``(soft, hard)`` limits for ``message``: its own, else this policy's."""
        if message.time_limit is None and message.soft_time_limit is None:
            return self.soft_time_limit, self.time_limit  # the common case
        return (
            _first(message.soft_time_limit, self.soft_time_limit),
            _first(message.time_limit, self.time_limit),
        )


class Policies:
    """The policy of each task, resolved on first use and kept: a worker calls
    ``resolve_all`` at start, so a bad option stops it there.

    Args:
        tasks: the task registry.
        conf: the app's settings.
        worker_soft, worker_hard: the worker's ``--soft-time-limit`` / ``--time-limit``.
    """

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        conf: Settings,
        worker_soft: float | None = None,
        worker_hard: float | None = None,
    ) -> None:
        self._tasks = tasks
        self._conf = conf
        self._worker = (worker_soft, worker_hard)
        self._by_name: dict[str, Policy] = {}
        self._shares = 1  # rate limits are split between this many processes

    def __getitem__(self, name: str) -> Policy:
        policy = self._by_name.get(name)
        if policy is None:
            task = self._tasks.get(name)
            policy = self._shared(Policy.resolve(task, self._conf, *self._worker))
            self._by_name[name] = policy
        return policy

    def inherit(self, other: Policies, shares: int) -> None:
        """Take ``other``'s policies as they are now (a consuming prefork child takes
        its parent's, remote control's changes included), each rate limit split in
        ``shares``: a rate limit is per worker, and each child fetches on its own."""
        self._shares = max(1, shares)
        self._by_name = {
            name: dataclasses.replace(policy, rate=policy.rate / self._shares)
            if policy.rate
            else policy
            for name, policy in other._by_name.items()
        }

    def _shared(self, policy: Policy) -> Policy:
        if self._shares == 1 or not policy.rate:
            return policy
        return dataclasses.replace(policy, rate=policy.rate / self._shares)

    @property
    def default(self) -> Policy:
        """The policy of a task this worker does not know: the worker's and the app's
        defaults (``inspect stats`` shows its time limits)."""
        return Policy.resolve(None, self._conf, *self._worker)

    def set_rate_limit(self, name: str, rate: str | float | None) -> None:
        """Replace the rate limit of ``name`` on this worker (None: no limit). Requests
        already waiting for a token keep their turn.

        Raises:
            ConfigurationError: ``rate`` is not a rate.
        """
        self._by_name[name] = self._shared(dataclasses.replace(self[name], rate=parse_rate(rate)))

    def set_time_limits(self, name: str, soft: float | None, hard: float | None) -> None:
        """Replace the time limits of ``name`` on this worker, in seconds (None: none),
        for the messages received from now on."""
        self._by_name[name] = dataclasses.replace(
            self[name], soft_time_limit=_first(soft), time_limit=_first(hard)
        )

    def resolve_all(self) -> None:
        """Resolve every registered task's policy now.

        Raises:
            ConfigurationError: a task's option cannot be used (a rate limit that
                does not parse), naming the task.
        """
        for name in self._tasks:
            self[name]


def _first(*values: float | None) -> float | None:
    """The first value given and positive (0 means "none", as in Celery)."""
    return next((float(v) for v in values if v is not None and v > 0), None)
