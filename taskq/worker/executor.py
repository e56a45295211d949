"""Running one task and recording what happened.

``execute`` is ``begin`` (look up, expiry, STARTED, ``task_prerun``), ``trace``
(call the task inside its request context and time limits, and classify the
outcome: success, failure, retry, ignore, reject; never touches the broker) and
``finish`` (``record`` stores the outcome, runs ``link``/``link_error`` callbacks
and logs; ``announce`` fires the outcome's signals). The asyncio pool runs the
same three steps with its own ``trace``. ``run_eager`` runs a task in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import time
import traceback as tb_mod
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskq import canvas, signals
from taskq.errors import (
    BackendError,
    Ignore,
    NotRegistered,
    Reject,
    Retry,
    TaskError,
    TaskRevokedError,
)
from taskq.result import exception_to_dict, states
from taskq.task import Context, current_request, new_id
from taskq.worker.limits import enforced

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import Task

log = logging.getLogger("taskq.worker")

IGNORED, REJECTED = "IGNORED", "REJECTED"
_NO_LIMITS = contextlib.nullcontext()
ACK, REQUEUE, DEAD_LETTER, WORKER_LOST = "ack", "requeue", "dead_letter", "worker_lost"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the worker must do with a message once its task ran (or could not)."""

    action: str  # ACK, REQUEUE, DEAD_LETTER or WORKER_LOST
    reason: str = ""


def execute(app: App, ctx: Context, *, inline_hard_limit: bool = True) -> Outcome:
    """Run the request described by ``ctx`` and record its state: the part of a
    worker that runs where the task runs (a thread, or a prefork child).

    ``ctx.soft_time_limit`` and ``ctx.time_limit`` are raised inside the task (see
    ``limits.enforced``); a prefork child passes ``inline_hard_limit=False``
    because its parent enforces the hard limit by killing it.
    """
    task = begin(app, ctx)
    if isinstance(task, Outcome):
        return task
    hard = ctx.time_limit if inline_hard_limit else None
    return finish(app, task, ctx, trace(task, ctx, (ctx.soft_time_limit, hard)))


def begin(app: App, ctx: Context) -> Task[Any, Any] | Outcome:
    """Find the task and get it ready to run: an ``Outcome`` means "do not run"
    (unregistered or expired, already recorded). Records STARTED when tracked and
    fires ``task_prerun``."""
    task = app.tasks.get(ctx.task or "")
    if task is None:
        log.error("Received unregistered task of type %r (id %s).", ctx.task, ctx.id)
        error = NotRegistered(f"Task {ctx.task!r} is not registered on worker {ctx.hostname}.")
        store(app, None, ctx, states.FAILURE, error)
        return Outcome(ACK)
    if ctx.expires is not None and ctx.expires <= datetime.now(timezone.utc):
        log.info("Task %s[%s] expired: not run", ctx.task, ctx.id)
        store(app, task, ctx, states.REVOKED, TaskRevokedError("expired"))
        signals.task_revoked.send(task, request=ctx, terminated=False, signum=None, expired=True)
        return Outcome(ACK)
    track = task.track_started if task.track_started is not None else app.conf.task_track_started
    if track:
        store(app, task, ctx, states.STARTED, {"pid": os.getpid(), "hostname": ctx.hostname})
    signals.task_prerun.send(task, task_id=ctx.id, task=task, args=ctx.args, kwargs=ctx.kwargs)
    return task


def finish(app: App, task: Task[Any, Any], ctx: Context, traced: Traced) -> Outcome:
    """Record what ``traced`` says, fire the outcome's signals and ``task_postrun``,
    and say what to do with the message."""
    record(app, task, ctx, traced)
    announce(task, ctx, traced)
    if traced.state == REJECTED:
        if traced.requeue:
            return Outcome(REQUEUE)
        return Outcome(DEAD_LETTER, f"rejected by the task: {traced.value}")
    return Outcome(ACK)


def announce(task: Task[Any, Any], ctx: Context, traced: Traced) -> None:
    """Fire ``task_success`` / ``task_failure`` / ``task_retry``, then ``task_postrun``."""
    if traced.state == states.SUCCESS:
        signals.task_success.send(task, result=traced.value)
    elif traced.state == states.FAILURE:
        signals.task_failure.send(
            task,
            task_id=ctx.id,
            exception=traced.value,
            args=ctx.args,
            kwargs=ctx.kwargs,
            traceback=traced.traceback,
        )
    elif traced.state == states.RETRY:
        signals.task_retry.send(task, request=ctx, reason=traced.value)
    signals.task_postrun.send(
        task,
        task_id=ctx.id,
        task=task,
        args=ctx.args,
        kwargs=ctx.kwargs,
        retval=traced.value,
        state=traced.state,
    )


@dataclasses.dataclass
class Traced:
    """What one run of a task produced."""

    state: str
    value: Any = None
    traceback: str | None = None
    runtime: float = 0.0
    requeue: bool = False


def trace(
    task: Task[Any, Any], ctx: Context, limits: tuple[float | None, float | None] = (None, None)
) -> Traced:
    """Run ``task`` with ``ctx`` as its request; never raises for task errors.

    ``limits`` are the ``(soft, hard)`` seconds raised inside the task.
    """
    token = current_request.set(ctx)
    start = time.monotonic()
    try:
        with enforced(*limits) if limits[0] or limits[1] else _NO_LIMITS:
            value = task.run(*ctx.args, **ctx.kwargs)
            if value is not None and inspect.isawaitable(value):
                value = asyncio.run(_await(value))
        return Traced(states.SUCCESS, value, runtime=time.monotonic() - start)
    except Exception as exc:
        return classify(task, ctx, exc, time.monotonic() - start)
    finally:
        current_request.reset(token)


def classify(task: Task[Any, Any], ctx: Context, exc: Exception, runtime: float) -> Traced:
    """What an exception raised by a task means (call it inside ``except``)."""
    if isinstance(exc, Retry):
        return Traced(states.RETRY, exc, runtime=runtime)
    if isinstance(exc, Ignore):
        return Traced(IGNORED, runtime=runtime)
    if isinstance(exc, Reject):
        return Traced(REJECTED, exc, requeue=exc.requeue, runtime=runtime)
    if task.autoretry_for and isinstance(exc, task.autoretry_for):
        return _autoretry(task, ctx, exc, runtime)
    return Traced(states.FAILURE, exc, tb_mod.format_exc(), runtime)


async def _await(value: Any) -> Any:
    return await value


def _autoretry(task: Task[Any, Any], ctx: Context, exc: Exception, runtime: float) -> Traced:
    token = current_request.set(ctx)
    try:
        options = {k: v for k, v in task.retry_kwargs.items() if k != "countdown"}
        task.retry(exc=exc, countdown=task.backoff_delay(ctx.retries), **options)
    except Retry as retry:
        return Traced(states.RETRY, retry, runtime=runtime)
    except Exception as final:  # max retries exceeded: the original error, or ours
        return Traced(states.FAILURE, final, tb_mod.format_exc(), runtime)
    finally:
        current_request.reset(token)
    raise AssertionError("Task.retry returned")  # pragma: no cover - retry always raises


def record(app: App, task: Task[Any, Any], ctx: Context, traced: Traced) -> None:
    """Store the outcome, run callbacks and log it (the worker's bookkeeping)."""
    name, task_id = task.name, ctx.id
    assert task_id is not None
    if traced.state == states.SUCCESS:
        if log.isEnabledFor(logging.INFO):  # _short() is a repr: not for nothing
            log.info(
                "Task %s[%s] succeeded in %.6fs: %s",
                name,
                task_id,
                traced.runtime,
                _short(traced.value),
            )
        if not _ignores_result(app, task, ctx):
            store(app, task, ctx, states.SUCCESS, traced.value, runtime=traced.runtime)
        if ctx.chain or ctx.callbacks or ctx.chord:  # else the workflow has nothing to do
            canvas.on_success(app, ctx, traced.value)
    elif traced.state == states.RETRY:
        log.info("Task %s[%s] retry: %s", name, task_id, traced.value)
        exc = (
            traced.value.exc
            if isinstance(traced.value, Retry) and traced.value.exc
            else traced.value
        )
        store(app, task, ctx, states.RETRY, exc, traceback=traced.traceback)
    elif traced.state == states.FAILURE:
        log.error(
            "Task %s[%s] raised unexpected: %r\n%s", name, task_id, traced.value, traced.traceback
        )
        store(
            app,
            task,
            ctx,
            states.FAILURE,
            traced.value,
            traceback=traced.traceback,
            runtime=traced.runtime,
        )
        canvas.on_failure(app, ctx, traced.value)
    elif traced.state == REJECTED:
        log.warning(
            "Task %s[%s] rejected itself (requeue=%s): %s",
            name,
            task_id,
            traced.requeue,
            traced.value,
        )


def store(
    app: App,
    task: Task[Any, Any] | None,
    ctx: Context,
    state: str,
    value: Any,
    *,
    traceback: str | None = None,
    runtime: float | None = None,
) -> None:
    """Write a state to the result backend; a value the serializer refuses becomes a
    FAILURE that says so. Backend errors are logged, never raised into the worker."""
    backend = app.backend
    if backend is None or ctx.id is None:
        return
    result = exception_to_dict(value) if isinstance(value, BaseException) else value
    extra: dict[str, Any] = {"worker": ctx.hostname, "retries": ctx.retries}
    if runtime is not None:
        extra["runtime"] = runtime
    if app.conf.result_extended:
        extra.update(
            name=ctx.task,
            args=list(ctx.args),
            kwargs=ctx.kwargs,
            queue=ctx.delivery_info.get("routing_key"),
        )
    try:
        try:
            backend.store(ctx.id, state, result, traceback=traceback, extra=extra)
        except (TypeError, ValueError) as exc:
            error = TaskError(
                f"The return value of {ctx.task} could not be stored with the "
                f"{backend.serializer!r} result serializer: {exc}. Return plain data "
                "(dict, list, str, numbers) or pick another result_serializer."
            )
            backend.store(ctx.id, states.FAILURE, exception_to_dict(error), extra=extra)
    except BackendError as exc:
        log.error("Could not store %s for task %s: %s", state, ctx.id, exc)


def _ignores_result(app: App, task: Task[Any, Any], ctx: Context) -> bool:
    if task.ignore_result is not None:
        return task.ignore_result or ctx.ignore_result
    return ctx.ignore_result or app.conf.task_ignore_result


def _short(value: Any, limit: int = 256) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_eager(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """Run a task in-process as a worker would; retries run again at once.

    Returns the result meta. Raises the task's exception when
    ``task_eager_propagates`` is set.
    """
    app = task.app
    parent = current_request.get()
    ctx = Context(
        id=options.get("task_id") or new_id(),
        task=task.name,
        args=args,
        kwargs=kwargs,
        hostname=f"eager@{os.uname().nodename}",
        parent_id=parent.id if parent else None,
        root_id=(parent.root_id or parent.id) if parent else None,
        is_eager=True,
        called_directly=False,
    )
    ctx.root_id = ctx.root_id or ctx.id
    while True:
        traced = trace(task, ctx)
        if traced.state != states.RETRY:
            break
        ctx.retries += 1
    if app.conf.task_store_eager_result:
        record(app, task, ctx, traced)
    if traced.state == states.FAILURE and app.conf.task_eager_propagates:
        raise traced.value
    if traced.state == states.SUCCESS:
        ctx.callbacks = [dict(s) for s in _as_list(options.get("link"))]
        canvas.on_success(app, ctx, traced.value)
    value = traced.value
    return {
        "task_id": ctx.id,
        "status": traced.state if traced.state in states.READY_STATES else states.SUCCESS,
        "result": exception_to_dict(value) if isinstance(value, BaseException) else value,
        "traceback": traced.traceback,
    }


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
