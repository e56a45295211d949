"""The dashboard's actions: each takes the posted form and returns what to tell
the person (one line), or raises ``ActionError`` with what was wrong.

They block (broker and remote control round trips) and ``web`` runs them off the
event loop, after checking the CSRF token. Remote control commands are sent with
``reply=True`` and a short timeout, so the message says which workers answered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from taskq.broker import dlq
from taskq.control.client import flatten
from taskq.errors import TaskqError

if TYPE_CHECKING:
    from taskq.dashboard.monitor import Monitor

Form = Mapping[str, str]
#: Seconds a command waits for workers' replies.
REPLY_TIMEOUT = 2.0


class ActionError(Exception):
    """The form was wrong or the action failed; the message says what to do."""


def _required(form: Form, name: str) -> str:
    value = (form.get(name) or "").strip()
    if not value:
        raise ActionError(f"The form has no {name!r}: fill it in and try again.")
    return value


def _replies(replies: list[dict[str, Any]] | None, doing: str) -> str:
    nodes = flatten(replies or [])
    if not nodes:
        return f"{doing}: no worker replied within {REPLY_TIMEOUT:g}s."
    said = "; ".join(f"{name}: {_said(reply)}" for name, reply in sorted(nodes.items()))
    return f"{doing}: {said}"


def _said(reply: Any) -> str:
    if isinstance(reply, dict):
        return str(reply.get("ok") or reply.get("error") or reply)
    return str(reply)


def requeue(monitor: Monitor, form: Form) -> str:
    """Requeue one dead letter (``id``) or all of them (``all``)."""
    ids = None if form.get("all") else [_required(form, "id")]
    moved = dlq.requeue(monitor.app.broker, ids)
    if ids is not None and not moved:
        raise ActionError(f"Dead letter {ids[0]} is no longer in the dead-letter queue.")
    return f"Requeued {moved} message(s)."


def purge(monitor: Monitor, form: Form) -> str:
    """Delete every dead letter."""
    return f"Purged {dlq.purge(monitor.app.broker)} dead-lettered message(s)."


def revoke(monitor: Monitor, form: Form) -> str:
    """Revoke a task (``task_id``); with ``terminate``, stop it if it runs."""
    task_id = _required(form, "task_id")
    terminate = bool(form.get("terminate"))
    signal = form.get("signal") or "SIGTERM"
    replies = monitor.app.control.revoke(
        task_id,
        terminate=terminate,
        signal=signal,
        reply=True,
        timeout=REPLY_TIMEOUT,
        limit=_alive(monitor),
    )
    doing = "Terminated" if terminate else "Revoked"
    return _replies(replies, f"{doing} {task_id}")


def _alive(monitor: Monitor) -> int | None:
    """Workers known to be up: a broadcast stops waiting once that many replied."""
    up = sum(1 for worker in monitor.fleet.workers() if worker.alive())
    return up or None


def _destination(form: Form) -> list[str]:
    return [_required(form, "worker")]


def shutdown(monitor: Monitor, form: Form) -> str:
    """Warm-shut one worker down."""
    replies = monitor.app.control.shutdown(_destination(form), reply=True, timeout=REPLY_TIMEOUT)
    return _replies(replies, "Shutdown")


def pool(monitor: Monitor, form: Form) -> str:
    """Grow (``change=grow``) or shrink one worker's pool by ``n``."""
    try:
        n = int(form.get("n") or 1)
    except ValueError:
        raise ActionError(f"n must be a whole number, got {form.get('n')!r}.") from None
    if n < 1:
        raise ActionError(f"n must be at least 1, got {n}.")
    change = form.get("change")
    control = monitor.app.control
    command: Callable[..., list[dict[str, Any]] | None]
    if change == "grow":
        command = control.pool_grow
    elif change == "shrink":
        command = control.pool_shrink
    else:
        raise ActionError(f"change must be 'grow' or 'shrink', got {change!r}.")
    replies = command(n, _destination(form), reply=True, timeout=REPLY_TIMEOUT)
    return _replies(replies, f"Pool {change} by {n}")


def rate_limit(monitor: Monitor, form: Form) -> str:
    """Set a task's rate limit (``rate``: ``10/s``, ``100/m``; empty: none) on one
    worker (``worker``) or all (no ``worker``)."""
    task = _required(form, "task")
    rate = (form.get("rate") or "").strip() or None
    worker = (form.get("worker") or "").strip()
    destination = [worker] if worker else None
    replies = monitor.app.control.rate_limit(
        task, rate, destination, reply=True, timeout=REPLY_TIMEOUT, limit=_alive(monitor)
    )
    return _replies(replies, f"Rate limit of {task} set to {rate or 'none'}")


#: What ``POST /actions/<name>`` runs.
ACTIONS: dict[str, Callable[[Monitor, Form], str]] = {
    "requeue": requeue,
    "purge": purge,
    "revoke": revoke,
    "shutdown": shutdown,
    "pool": pool,
    "rate-limit": rate_limit,
}


def run(name: str, monitor: Monitor, form: Form) -> tuple[bool, str]:
    """Run action ``name``: ``(True, what happened)`` or ``(False, what went wrong)``."""
    action = ACTIONS.get(name)
    if action is None:
        return False, f"There is no action {name!r}."
    try:
        return True, action(monitor, form)
    except ActionError as exc:
        return False, str(exc)
    except TaskqError as exc:
        return False, f"{name} failed: {exc}"
