"""The task events a worker sends, built from its requests and their outcomes.

Each function is called only after the caller checked ``events.task_events``, so
with task events off none of this runs. Field names and values are Celery's
(``celery.worker.request`` / ``strategy``): ``task-received`` carries the
argument reprs from the message headers, ``task-succeeded`` the result's repr and
the run time, ``task-failed`` and ``task-retried`` the exception's repr and the
traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskq.errors import TaskRevokedError
from taskq.result import State
from taskq.worker.executor import Action, Outcome

if TYPE_CHECKING:
    from taskq.events import EventDispatcher
    from taskq.worker.request import Request


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def received(events: EventDispatcher, request: Request) -> None:
    message, headers = request.message, request.delivery.envelope.headers
    events.send(
        "task-received",
        uuid=message.id,
        name=message.task,
        args=headers.get("argsrepr") or repr(message.args),
        kwargs=headers.get("kwargsrepr") or repr(message.kwargs),
        root_id=message.root_id,
        parent_id=message.parent_id,
        retries=message.retries,
        eta=_iso(message.eta),
        expires=_iso(message.expires),
    )


def finished(events: EventDispatcher, request: Request, outcome: Outcome) -> None:
    """The event for how ``request`` ended (none when the outcome tells nothing)."""
    task_id = request.id
    if outcome.action is Action.WORKER_LOST:
        events.send(
            "task-failed",
            uuid=task_id,
            exception=f"WorkerLostError({outcome.reason!r})",
            traceback=None,
        )
        return
    summary = outcome.summarize()
    if summary is None:
        return
    state = summary.state
    if state == State.SUCCESS:
        events.send("task-succeeded", uuid=task_id, result=summary.text, runtime=summary.runtime)
    elif state == State.FAILURE:
        events.send(
            "task-failed", uuid=task_id, exception=summary.text, traceback=summary.traceback
        )
    elif state == State.RETRY:
        events.send(
            "task-retried", uuid=task_id, exception=summary.text, traceback=summary.traceback
        )
    elif state == State.REJECTED:
        events.send("task-rejected", uuid=task_id, requeue=summary.requeue)
    elif state == State.REVOKED:
        revoked(
            events, request, terminated=summary.text != "expired", expired=summary.text == "expired"
        )


def revoked(
    events: EventDispatcher,
    request: Request,
    terminated: bool = False,
    signum: int | None = None,
    expired: bool = False,
) -> None:
    events.send(
        "task-revoked", uuid=request.id, terminated=terminated, signum=signum, expired=expired
    )


def not_run(events: EventDispatcher, request: Request, exc: BaseException) -> None:
    """A task the worker decided not to run: revoked, or failed (its process died
    too often, ...)."""
    if isinstance(exc, TaskRevokedError):
        revoked(events, request)
    else:
        events.send("task-failed", uuid=request.id, exception=repr(exc), traceback=None)
