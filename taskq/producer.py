"""Turning a call into a message and handing it to the broker."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from taskq import message, routing
from taskq.canvas import Signature
from taskq.errors import BrokerError, ConfigurationError, did_you_mean
from taskq.task import Context, current_request, new_id

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.broker.base import Broker, Envelope
    from taskq.task import Task

log = logging.getLogger("taskq.producer")

CALL_OPTIONS = frozenset(
    {
        "countdown", "eta", "expires", "queue", "priority", "task_id", "headers",
        "serializer", "ignore_result", "retry", "retry_policy", "link", "link_error",
        "time_limit", "soft_time_limit", "parent_id", "root_id", "group_id",
        "group_index", "chord", "chain", "shadow", "reply_to",
    }
)  # fmt: skip

_TASK_DEFAULTS = ("queue", "priority", "serializer", "expires", "time_limit", "soft_time_limit")


def build(
    app: App,
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: dict[str, Any],
    task: Task[Any, Any] | None = None,
    retry_of: Context | None = None,
) -> tuple[message.TaskMessage, str, int | None, dict[str, Any]]:
    """The message for a call, its queue, its priority, and the merged options."""
    unknown = set(options) - CALL_OPTIONS
    if unknown:
        bad = sorted(unknown)[0]
        raise ConfigurationError(
            f"Unknown option {bad!r} for {name}.apply_async().{did_you_mean(bad, CALL_OPTIONS)} "
            "Task arguments go in args=/kwargs=, options are: " + ", ".join(sorted(CALL_OPTIONS))
        )
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    defaults = {
        k: getattr(task, k) for k in _TASK_DEFAULTS if task and getattr(task, k) is not None
    }
    if task is not None and task.ignore_result is not None:
        defaults["ignore_result"] = task.ignore_result
    merged = {
        **defaults,
        **routing.route(app.conf.task_routes, name, args, kwargs, options),
        **options,
    }
    conf = app.conf
    tz = ZoneInfo(conf.timezone)
    now = datetime.now(timezone.utc)
    if retry_of is not None:  # a retry keeps its place in the workflow
        parent_id, root_id = retry_of.parent_id, retry_of.root_id
    else:  # a task sent from inside a running task is its child
        current = current_request.get()
        parent_id = current.id if current else None
        root_id = (current.root_id or current.id) if current else None
    task_id = merged.get("task_id") or new_id()
    msg = message.TaskMessage(
        id=task_id,
        task=name,
        args=args,
        kwargs=kwargs,
        root_id=merged.get("root_id") or root_id,
        parent_id=merged.get("parent_id") or parent_id,
        group=merged.get("group_id") or (retry_of.group if retry_of else None),
        group_index=(
            merged["group_index"]
            if merged.get("group_index") is not None  # 0 is the first member's index
            else (retry_of.group_index if retry_of else None)
        ),
        eta=_eta(merged.get("countdown"), merged.get("eta"), now, tz),
        expires=_expires(merged.get("expires"), now, tz),
        retries=retry_of.retries + 1 if retry_of else 0,
        time_limit=merged.get("time_limit", conf.task_time_limit),
        soft_time_limit=merged.get("soft_time_limit", conf.task_soft_time_limit),
        ignore_result=bool(merged.get("ignore_result", conf.task_ignore_result)),
        callbacks=_signatures(merged.get("link")) or (retry_of.callbacks if retry_of else None),
        errbacks=_signatures(merged.get("link_error")) or (retry_of.errbacks if retry_of else None),
        chain=merged.get("chain") or (retry_of.chain if retry_of else None),
        chord=merged.get("chord") or (retry_of.chord if retry_of else None),
        reply_to=merged.get("reply_to"),
        shadow=merged.get("shadow"),
        extra_headers=dict(merged.get("headers") or {}),
    )
    queue = merged.get("queue") or conf.task_default_queue
    priority = merged.get("priority", conf.task_default_priority)
    return msg, queue, priority, merged


def publish(
    app: App,
    envelope: Envelope,
    queue: str,
    priority: int | None,
    eta: datetime | None,
    *,
    retry: bool | None = None,
    retry_policy: Mapping[str, Any] | None = None,
) -> None:
    """Publish with the retry policy; raise ``BrokerError`` when it is spent."""
    broker: Broker = app.broker
    policy = {**app.conf.task_publish_retry_policy, **(retry_policy or {})}
    retries = int(policy.get("max_retries") or 0)
    if not (app.conf.task_publish_retry if retry is None else retry):
        retries = 0
    interval = float(policy.get("interval_start", 0.0))
    eta_ts = eta.timestamp() if eta is not None else None
    for attempt in range(retries + 1):
        try:
            broker.publish(envelope, queue, priority=priority, eta=eta_ts)
            return
        except BrokerError as exc:
            if attempt == retries:
                raise BrokerError(
                    f"Could not publish task {envelope.headers.get('task')}"
                    f"[{envelope.headers.get('id')}] after {attempt + 1} attempt(s): {exc}"
                ) from exc
            log.warning("publish failed (%s); retrying in %.2fs", exc, interval)
            time.sleep(interval)
            interval = min(
                interval + float(policy.get("interval_step", 0.2)),
                float(policy.get("interval_max", 1.0)),
            )


def _eta(countdown: Any, eta: Any, now: datetime, tz: ZoneInfo) -> datetime | None:
    if countdown is not None and eta is not None:
        raise ConfigurationError("Give countdown or eta, not both.")
    if countdown is not None:
        if isinstance(countdown, timedelta):
            countdown = countdown.total_seconds()
        return now + timedelta(seconds=float(countdown)) if float(countdown) > 0 else None
    if eta is None:
        return None
    if not isinstance(eta, datetime):
        raise ConfigurationError(
            f"eta must be a datetime, got {eta!r}; use countdown= for seconds."
        )
    # A naive eta is wall-clock time in the app's timezone setting (UTC by default).
    return eta if eta.tzinfo else eta.replace(tzinfo=tz)


def _expires(expires: Any, now: datetime, tz: ZoneInfo) -> datetime | None:
    if expires is None:
        return None
    if isinstance(expires, datetime):
        return expires if expires.tzinfo else expires.replace(tzinfo=tz)
    if isinstance(expires, timedelta):
        return now + expires
    if isinstance(expires, (int, float)):
        return now + timedelta(seconds=float(expires))
    raise ConfigurationError(
        f"expires must be seconds, a timedelta or a datetime, got {expires!r}."
    )


def _signatures(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [dict(Signature.from_dict(item)) for item in items]
