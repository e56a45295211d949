"""Running one task and recording what happened.

``Executor.execute`` is ``begin`` (look up, expiry, STARTED, ``task_prerun``),
``trace`` (call the task inside its request context and time limits, and classify
the outcome: success, failure, retry, ignore, reject; never touches the broker)
and ``finish`` (``record`` stores the outcome, runs ``link``/``link_error``
callbacks and logs; ``announce`` fires the outcome's signals). The asyncio pool
runs the same three steps with its own ``trace``; ``run_eager`` runs a task
in-process for ``Task.apply``.

The executor is handed what it uses when it is made (the task registry, the
settings, the result store, each task's ``Policy``) and sends workflow steps
through the signatures' app (``taskq.canvas.hooks``). It sits below ``Task`` in
the layers (tests/test_layers.py) because ``Task.apply`` runs through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import inspect
import logging
import os
import time
import traceback as tb_mod
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskq import canvas, signals
from taskq.context import Context, current_request
from taskq.errors import (
    BackendError,
    BrokerError,
    Ignore,
    MessageRefused,
    NotRegistered,
    Reject,
    Retry,
    TaskError,
    TaskRevokedError,
)
from taskq.message import new_id
from taskq.result import READY_STATES, State, exception_to_dict, task_key
from taskq.worker.limits import enforced
from taskq.worker.policy import Policies

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.backends.store import ResultStore
    from taskq.config import Settings
    from taskq.metrics.worker import WorkerMeter
    from taskq.task import Task
    from taskq.worker.results import HeldResults

log = logging.getLogger("taskq.worker")

_NO_LIMITS = contextlib.nullcontext()

#: Raises ``(soft, hard)`` time limits inside the block it guards.
Guard = Callable[[float | None, float | None], contextlib.AbstractContextManager[None]]


class Action(enum.Enum):
    """What the worker does with a message once its task ran (or could not)."""

    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"
    #: The process running it died: redeliver (counting it) or record the failure.
    WORKER_LOST = "worker_lost"
    #: Not run: the message is no longer leased to this worker (``Request.may_run``).
    GONE = "gone"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """An ``Action`` and, for dead letters and lost workers, why; and what happened,
    for task events: ``traced`` when the task ran in this process, ``summary`` when
    a child process reported it or the task did not run (unregistered, expired,
    terminated)."""

    action: Action
    reason: str = ""
    traced: Traced | None = None
    summary: Summary | None = None

    def summarize(self) -> Summary | None:
        """What happened, as task events tell it (None: nothing to tell). Called only
        while task events are on: it takes the repr of the result."""
        if self.summary is not None:
            return self.summary
        return summarize(self.traced) if self.traced is not None else None


def internal_error(request: object, exc: Exception) -> Outcome:
    """What to do with a message whose handling raised outside the task (a bug, or
    data in it that nothing checked). A broker or backend that could not be reached
    may be back soon: give the message back. Anything else would fail again on every
    delivery and never be counted (the process lived), so it goes to the dead-letter
    queue with the exception as the reason (issue 12)."""
    if isinstance(exc, (BrokerError, BackendError)):
        log.error("Could not finish %r (%s); giving it back", request, exc)
        return Outcome(Action.REQUEUE)
    log.error("Internal error handling %r; dead-lettering it", request, exc_info=exc)
    return Outcome(Action.DEAD_LETTER, f"internal error: {exc!r}"[:1000])


@dataclasses.dataclass
class Traced:
    """What one run of a task produced."""

    state: State
    value: Any = None
    traceback: str | None = None
    runtime: float = 0.0
    requeue: bool = False


@dataclasses.dataclass(frozen=True)
class Summary:
    """A task's run as its events show it: the state, the result's or exception's
    repr (Celery's ``result`` / ``exception`` fields), the traceback, the run time."""

    state: State
    text: str
    traceback: str | None = None
    runtime: float = 0.0
    requeue: bool = False


#: Longest repr of a result or exception in an event (Celery's resultrepr_maxsize).
REPR_MAX = 1024


def summarize(traced: Traced) -> Summary:
    """``traced`` for events: reprs cut at ``REPR_MAX`` characters."""
    value = traced.value
    if isinstance(value, Retry) and value.exc is not None:
        value = value.exc
    text = _short(value, REPR_MAX)
    return Summary(traced.state, text, traced.traceback, traced.runtime, traced.requeue)


class Executor:
    """Runs tasks and records their outcomes.

    Args:
        app: the app whose tasks run; its signatures send workflow steps.
        policies: each task's resolved policy (``taskq.worker.policy``).
        meter: counts each outcome for ``--metrics-port`` (None: off, and each
            outcome costs one attribute check). It counts where the task ran: in a
            prefork child, into that child's own metrics file.
    """

    def __init__(self, app: App, policies: Policies, meter: WorkerMeter | None = None) -> None:
        self.app = app
        self.tasks: Mapping[str, Task[Any, Any]] = app.tasks
        self.conf: Settings = app.conf
        self.results: ResultStore = app.results
        self.policies = policies
        self.meter = meter
        #: Where plain SUCCESS results wait to be written in a batch with others
        #: (``taskq.worker.results``); None: each is written at once.
        self.held: HeldResults | None = None

    def reset_connections(self) -> None:
        """Forget inherited connections (in a forked child): see ``App.reset_connections``.
        A child writes its results itself: the parent's held results are not its own."""
        self.held = None
        self.app.reset_connections()

    def execute(self, ctx: Context, *, inline_hard_limit: bool = True) -> Outcome:
        """Run the request described by ``ctx`` and record its state: the part of a
        worker that runs where the task runs (a thread, or a prefork child).

        ``ctx.soft_time_limit`` and ``ctx.time_limit`` are raised inside the task
        (see ``limits.enforced``); a prefork child passes ``inline_hard_limit=False``
        because its parent enforces the hard limit by killing it.
        """
        task = self.begin(ctx)
        if isinstance(task, Outcome):
            return task
        hard = ctx.time_limit if inline_hard_limit else None
        return self.finish(task, ctx, trace(task, ctx, (ctx.soft_time_limit, hard)))

    def begin(self, ctx: Context) -> Task[Any, Any] | Outcome:
        """Find the task and get it ready to run: an ``Outcome`` means "do not run"
        (unregistered or expired, already recorded). Records STARTED when tracked and
        fires ``task_prerun``."""
        task = self.tasks.get(ctx.task or "")
        if task is None:  # the consumer checks first; kept for a pool's own callers
            name = ctx.task or ""
            error = NotRegistered(f"Worker {ctx.hostname}: {self.app.not_registered(name)}")
            log.error("Received unregistered task %s[%s]. %s", ctx.task, ctx.id, error)
            self.store(None, ctx, State.FAILURE, error)
            if self.meter is not None:
                self.meter.task_done(ctx.task, State.FAILURE)
            return Outcome(
                Action.DEAD_LETTER,
                f"NotRegistered: {error}",
                summary=Summary(State.FAILURE, repr(error)),
            )
        if ctx.expires is not None and ctx.expires <= datetime.now(timezone.utc):
            log.info("Task %s[%s] expired: not run", ctx.task, ctx.id)
            self.store(task, ctx, State.REVOKED, TaskRevokedError("expired"))
            signals.task_revoked.send(
                task, request=ctx, terminated=False, signum=None, expired=True
            )
            return Outcome(Action.ACK, summary=Summary(State.REVOKED, "expired"))
        if self.policies[task.name].track_started:
            self.store(task, ctx, State.STARTED, {"pid": os.getpid(), "hostname": ctx.hostname})
        signals.task_prerun.send(task, task_id=ctx.id, task=task, args=ctx.args, kwargs=ctx.kwargs)
        return task

    def finish(self, task: Task[Any, Any], ctx: Context, traced: Traced) -> Outcome:
        """Record what ``traced`` says, fire the outcome's signals and ``task_postrun``,
        and say what to do with the message."""
        self.record(task, ctx, traced)
        announce(task, ctx, traced)
        unconfirmed = self._confirm_sends(ctx)
        if unconfirmed is not None:
            return unconfirmed
        if traced.state == State.REJECTED:
            if traced.requeue:
                return Outcome(Action.REQUEUE, traced=traced)
            return Outcome(
                Action.DEAD_LETTER, f"rejected by the task: {traced.value}", traced=traced
            )
        return Outcome(Action.ACK, traced=traced)

    def _confirm_sends(self, ctx: Context) -> Outcome | None:
        """What the task sent (calls, retries, workflow steps) is stored before its
        message is acked: on RabbitMQ ``delay()`` returns before its confirm. None when
        all is confirmed; when it cannot be, the message goes back to run again (the
        sends may then be duplicated, never lost). Refused messages cannot be brought
        back by running again: logged, and the message is acked."""
        try:
            self.app.producer.flush()
        except MessageRefused as exc:
            log.error("Task %s[%s]: messages it sent were refused: %s", ctx.task, ctx.id, exc)
        except BrokerError as exc:
            log.error(
                "Task %s[%s]: what it sent is unconfirmed (%s); requeued", ctx.task, ctx.id, exc
            )
            return Outcome(Action.REQUEUE)
        return None

    def record(self, task: Task[Any, Any], ctx: Context, traced: Traced) -> None:
        """Store the outcome, run callbacks and log it (the worker's bookkeeping)."""
        name, task_id = task.name, ctx.id
        assert task_id is not None
        if self.meter is not None:
            self.meter.task_done(name, traced.state, traced.runtime)
        if traced.state == State.SUCCESS:
            if log.isEnabledFor(logging.INFO):  # _short() is a repr: not for nothing
                log.info(
                    "Task %s[%s] succeeded in %.6fs: %s",
                    name,
                    task_id,
                    traced.runtime,
                    _short(traced.value),
                )
            workflow = ctx.chain or ctx.callbacks or ctx.chord
            if not self.policies[name].ignores_result(ctx.ignore_result, self.conf):
                if self.held is None or workflow:  # what runs next may read it: now
                    self.store(task, ctx, State.SUCCESS, traced.value, runtime=traced.runtime)
                else:
                    self._hold(task, ctx, traced)
            if workflow:  # else the workflow has nothing to do
                canvas.on_success(self.app, ctx, traced.value)
        elif traced.state == State.RETRY:
            log.info("Task %s[%s] retry: %s", name, task_id, traced.value)
            exc = (
                traced.value.exc
                if isinstance(traced.value, Retry) and traced.value.exc
                else traced.value
            )
            self.store(task, ctx, State.RETRY, exc, traceback=traced.traceback)
        elif traced.state == State.FAILURE:
            log.error(
                "Task %s[%s] raised unexpected: %r\n%s",
                name,
                task_id,
                traced.value,
                traced.traceback,
            )
            self.store(
                task,
                ctx,
                State.FAILURE,
                traced.value,
                traceback=traced.traceback,
                runtime=traced.runtime,
            )
            canvas.on_failure(self.app, ctx, traced.value)
        elif traced.state == State.REJECTED:
            log.warning(
                "Task %s[%s] rejected itself (requeue=%s): %s",
                name,
                task_id,
                traced.requeue,
                traced.value,
            )

    def store(
        self,
        task: Task[Any, Any] | None,
        ctx: Context,
        state: State,
        value: Any,
        *,
        traceback: str | None = None,
        runtime: float | None = None,
    ) -> None:
        """Write a state to the result backend; a value the serializer refuses becomes
        a FAILURE that says so. Backend errors are logged, never raised into the worker."""
        if state == State.REVOKED and self.meter is not None:
            # Every way a task ends revoked (expired, revoked before it ran, terminated
            # in any pool) records it here, once.
            self.meter.task_done(ctx.task, State.REVOKED)
        backend = self.results.backend
        if backend is None or ctx.id is None:
            return
        result = exception_to_dict(value) if isinstance(value, BaseException) else value
        extra = self._extra(ctx, runtime)
        try:
            try:
                backend.store(ctx.id, state, result, traceback=traceback, extra=extra)
            except (TypeError, ValueError) as exc:
                error = TaskError(
                    f"The return value of {ctx.task} could not be stored with the "
                    f"{backend.serializer!r} result serializer: {exc}. Return plain data "
                    "(dict, list, str, numbers) or pick another result_serializer."
                )
                backend.store(ctx.id, State.FAILURE, exception_to_dict(error), extra=extra)
        except BackendError as exc:
            log.error("Could not store %s for task %s: %s", state, ctx.id, exc)

    def _extra(self, ctx: Context, runtime: float | None) -> dict[str, Any]:
        """The meta fields a worker adds to what it stores."""
        extra: dict[str, Any] = {"worker": ctx.hostname, "retries": ctx.retries}
        if runtime is not None:
            extra["runtime"] = runtime
        if self.conf.result_extended:
            extra.update(
                name=ctx.task,
                args=list(ctx.args),
                kwargs=ctx.kwargs,
                queue=ctx.delivery_info.get("routing_key"),
            )
        return extra

    def _hold(self, task: Task[Any, Any], ctx: Context, traced: Traced) -> None:
        """Encode a SUCCESS and hand it to ``held``: written with others, before the
        message is acked (``taskq.worker.results``)."""
        backend, held = self.results.backend, self.held
        if backend is None or held is None or ctx.id is None:
            return
        meta = backend.state_meta(
            ctx.id, State.SUCCESS, traced.value, extra=self._extra(ctx, traced.runtime)
        )
        try:
            data = backend.encode(meta)
        except (TypeError, ValueError):  # ``store`` records why, as a FAILURE
            self.store(task, ctx, State.SUCCESS, traced.value, runtime=traced.runtime)
            return
        held.add(task_key(ctx.id), data)

    def run_eager(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Run a task in-process as a worker would; retries run again at once.

        Returns the result meta. Raises the task's exception when
        ``task_eager_propagates`` is set.
        """
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
            if traced.state != State.RETRY:
                break
            ctx.retries += 1
        if self.conf.task_store_eager_result:
            self.record(task, ctx, traced)
        if traced.state == State.FAILURE and self.conf.task_eager_propagates:
            raise traced.value
        if traced.state == State.SUCCESS:
            ctx.callbacks = [dict(s) for s in _as_list(options.get("link"))]
            canvas.on_success(self.app, ctx, traced.value)
        value = traced.value
        return {
            "task_id": ctx.id,
            "status": traced.state if traced.state in READY_STATES else State.SUCCESS,
            "result": exception_to_dict(value) if isinstance(value, BaseException) else value,
            "traceback": traced.traceback,
        }


def announce(task: Task[Any, Any], ctx: Context, traced: Traced) -> None:
    """Fire ``task_success`` / ``task_failure`` / ``task_retry``, then ``task_postrun``."""
    if traced.state == State.SUCCESS:
        signals.task_success.send(task, result=traced.value)
    elif traced.state == State.FAILURE:
        signals.task_failure.send(
            task,
            task_id=ctx.id,
            exception=traced.value,
            args=ctx.args,
            kwargs=ctx.kwargs,
            traceback=traced.traceback,
        )
    elif traced.state == State.RETRY:
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


def trace(
    task: Task[Any, Any],
    ctx: Context,
    limits: tuple[float | None, float | None] = (None, None),
    guard: Guard = enforced,
) -> Traced:
    """Run ``task`` with ``ctx`` as its request; never raises for task errors.

    ``limits`` are the ``(soft, hard)`` seconds raised inside the task by
    ``guard(soft, hard)`` (``limits.enforced``, or a green pool's timeouts).
    """
    token = current_request.set(ctx)
    start = time.monotonic()
    try:
        with guard(*limits) if limits[0] or limits[1] else _NO_LIMITS:
            value = task.run(*ctx.args, **ctx.kwargs)
            if value is not None and inspect.isawaitable(value):
                value = asyncio.run(_await(value))
        return Traced(State.SUCCESS, value, runtime=time.monotonic() - start)
    except Exception as exc:
        return classify(task, ctx, exc, time.monotonic() - start)
    finally:
        current_request.reset(token)


def classify(task: Task[Any, Any], ctx: Context, exc: Exception, runtime: float) -> Traced:
    """What an exception raised by a task means (call it inside ``except``)."""
    if isinstance(exc, Retry):
        return Traced(State.RETRY, exc, runtime=runtime)
    if isinstance(exc, Ignore):
        return Traced(State.IGNORED, runtime=runtime)
    if isinstance(exc, Reject):
        return Traced(State.REJECTED, exc, requeue=exc.requeue, runtime=runtime)
    if task.autoretry_for and isinstance(exc, task.autoretry_for):
        return _autoretry(task, ctx, exc, runtime)
    return Traced(State.FAILURE, exc, tb_mod.format_exc(), runtime)


async def _await(value: Any) -> Any:
    return await value


def _autoretry(task: Task[Any, Any], ctx: Context, exc: Exception, runtime: float) -> Traced:
    token = current_request.set(ctx)
    try:
        options = {k: v for k, v in task.retry_kwargs.items() if k != "countdown"}
        task.retry(exc=exc, countdown=task.backoff_delay(ctx.retries), **options)
    except Retry as retry:
        return Traced(State.RETRY, retry, runtime=runtime)
    except Exception as final:  # max retries exceeded: the original error, or ours
        return Traced(State.FAILURE, final, tb_mod.format_exc(), runtime)
    finally:
        current_request.reset(token)
    raise AssertionError("Task.retry returned")  # pragma: no cover - retry always raises


def _short(value: Any, limit: int = 256) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
