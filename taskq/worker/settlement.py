"""Settlement: what happens to a message once its task ran, or could not run.

The pool reports each request it ran with an ``Outcome`` (``settle``): ack,
requeue, dead-letter, or "the process running it died" (``WORKER_LOST``), which
redelivers it with a count in the ``x-taskq-worker-lost`` header (the poison
guard: a task that kills its process every time ends in the dead-letter queue)
or, with ``reject_on_worker_lost`` off, records the failure. ``finish_unrun``
settles a request the worker decided not to run (revoked, poison) after
recording why and failing its workflow. With task events on, each settled
request's event (``task-succeeded``, ``task-failed``, ...) is sent here
(``taskq.worker.monitor``); with them off that costs one attribute check.

A request is settled once (``Request`` guards it); settle errors are logged and
the message's lease returns it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskq import canvas, signals
from taskq.errors import (
    BackendError,
    BrokerError,
    NotRegistered,
    TaskRevokedError,
    WorkerLostError,
)
from taskq.message import LOST_HEADER, worker_lost_count
from taskq.result import State
from taskq.worker import monitor
from taskq.worker.executor import Action, Executor, Outcome
from taskq.worker.policy import Policies
from taskq.worker.request import Request
from taskq.worker.window import Window

if TYPE_CHECKING:
    from taskq.broker.base import Broker, Delivery
    from taskq.events import EventDispatcher
    from taskq.metrics.worker import WorkerMeter

__all__ = ["LOST", "LOST_HEADER", "Settlement"]

#: What the meter counts for a task whose process died under it.
LOST = "LOST"

log = logging.getLogger("taskq.worker")


class Settlement:
    """Settles requests for one worker; ``settle`` is the pools' ``done`` callback.

    Args:
        broker: the worker's broker (redelivery with a count goes through it).
        executor: records outcomes the worker decides (revoked, lost, poison).
        policies: each task's ``reject_on_worker_lost``.
        window: told when a request is settled, so the consumer may fetch more.
        parked: how many rate-limited requests wait (``Window.free`` reads it).
        events: where task events go (sent only while ``events.task_events``).
        meter: counts the outcomes the executor does not see (``--metrics-port``):
            a lost worker process, tasks not run; None: off.
    """

    def __init__(
        self,
        broker: Broker,
        executor: Executor,
        policies: Policies,
        window: Window,
        parked: Callable[[], int],
        events: EventDispatcher,
        meter: WorkerMeter | None = None,
    ) -> None:
        self._broker = broker
        self._executor = executor
        self._policies = policies
        self._window = window
        self._parked = parked
        self._events = events
        self._meter = meter
        self._totals: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def totals(self) -> dict[str, int]:
        """Requests settled so far, by task name (``inspect stats``)."""
        with self._lock:
            return dict(self._totals)

    def settle(self, request: Request, outcome: Outcome) -> None:
        """What the pool calls once per request it ran. A request already settled
        (acked at start, or given back by a cold shutdown) stays as it is."""
        try:
            if outcome.action is Action.ACK:
                # After the results held before it are written, when there are any.
                held = self._executor.held
                if held is None or not held.ack_after(request, self._window.in_flight > 1):
                    request.ack()
            elif outcome.action is Action.REQUEUE:
                request.requeue()
            elif outcome.action is Action.DEAD_LETTER:
                request.dead_letter(outcome.reason)
            elif outcome.action is Action.GONE:
                pass  # not run: it is back in its queue already (Request.may_run)
            else:
                if self._meter is not None:
                    self._meter.task_done(request.name, LOST)
                self.worker_lost(request, outcome.reason)
        except Exception:
            log.exception("Could not settle %r; its lease will return it", request)
        finally:
            if self._events.task_events:
                monitor.finished(self._events, request, outcome)
            if outcome.action is not Action.GONE:  # it did not run here
                with self._lock:
                    self._totals[request.name] += 1
            self._window.settled(self._parked())

    def hold_here(self) -> None:
        """Results of tasks run on the calling thread wait for its ``flush_held``
        (``HeldResults.hold_here``): the consumer's thread, which runs the solo pool."""
        held = self._executor.held
        if held is not None:
            held.hold_here()

    def flush_held(self) -> None:
        """Write the results held now, then ack their messages (``HeldResults.flush``)."""
        held = self._executor.held
        if held is not None and (len(held) or held.waiting_acks()):
            held.flush()

    def close(self) -> None:
        """Write what is held and ack it: before the broker closes."""
        held = self._executor.held
        if held is not None:
            held.close()

    def worker_lost(self, request: Request, reason: str) -> None:
        """The process running the task died. Redeliver it (counting the attempt, so a
        task that kills its process every time ends in the dead-letter queue) or, with
        ``reject_on_worker_lost`` off, record the failure."""
        log.error("Task %s[%s]: %s", request.name, request.id, reason)
        if request.settled:  # acked when it started (acks_late off): it is lost
            error = WorkerLostError(reason)
            self._executor.store(None, request.context(), State.FAILURE, error)
            return
        if not self._policies[request.name].reject_on_worker_lost:
            # No event here: ``settle`` sends task-failed for every lost worker.
            self._unrun(request, WorkerLostError(reason), None)
            return
        env = request.delivery.envelope
        headers = {**env.headers, LOST_HEADER: worker_lost_count(env.headers) + 1}
        try:
            self._broker.publish(
                dataclasses.replace(env, headers=headers),
                request.delivery.queue,
                priority=env.properties.get("priority"),
            )
        except BrokerError as exc:
            # Give it back uncounted rather than leave it leased to this live worker.
            log.warning("Could not redeliver %r with its count (%s); requeueing it", request, exc)
            request.requeue()
            return
        request.ack()

    def not_registered(self, request: Request) -> None:
        """A task this worker does not have: record the failure, so a caller waiting on
        it learns at once, and park the message in the dead-letter queue, so that
        ``taskq dlq requeue`` runs it once the code is deployed (the new outcome then
        replaces this failure). Its workflow is not failed: the message is kept."""
        known = self._executor.app.not_registered(request.name)
        error = NotRegistered(
            f"Worker {request.hostname}: {known} Once it is deployed, requeue the message: "
            "taskq dlq requeue."
        )
        log.error("Received unregistered task %s[%s]. %s", request.name, request.id, error)
        self._executor.store(None, request.context(), State.FAILURE, error)
        if self._meter is not None:
            self._meter.task_done(request.name, State.FAILURE)
        request.dead_letter(f"NotRegistered: {error}")

    def escaped(self, delivery: Delivery, exc: Exception, doing: str) -> None:
        """Something no check foresaw went wrong with one message: dead-letter it with
        the exception as the reason, so it neither ends the worker nor comes back."""
        log.exception("Internal error %s; dead-lettering message %s", doing, delivery.tag)
        try:
            self._broker.dead_letter(delivery, f"internal error {doing}: {exc!r}"[:1000])
        except Exception:
            log.exception("Could not dead-letter message %s; its lease returns it", delivery.tag)

    def finish_unrun(
        self,
        request: Request,
        exc: BaseException,
        reason: str | None,
        dead_letter: str | None = None,
    ) -> None:
        """Record why ``request`` did not run (REVOKED for a revoke, else FAILURE),
        fail its workflow, then ack it (or dead-letter it with ``dead_letter``)."""
        if self._events.task_events:
            monitor.not_run(self._events, request, exc)
        if self._meter is not None and not isinstance(exc, TaskRevokedError):
            self._meter.task_done(request.name, State.FAILURE)  # revoked: Executor.store
        self._unrun(request, exc, reason, dead_letter)

    def _unrun(
        self,
        request: Request,
        exc: BaseException,
        reason: str | None,
        dead_letter: str | None = None,
    ) -> None:
        ctx = request.context()
        revoked = isinstance(exc, TaskRevokedError)
        state = State.REVOKED if revoked else State.FAILURE
        self._executor.store(None, ctx, state, exc)
        if revoked:
            task = self._executor.tasks.get(request.name)
            signals.task_revoked.send(
                task, request=ctx, terminated=False, signum=None, expired=False
            )
        if reason:
            log.info("Task %s[%s] %s: not run", request.name, request.id, reason)
        try:
            # A task that never ran still fails its workflow: errbacks run and its
            # chord fails instead of waiting forever for it.
            canvas.on_failure(self._executor.app, ctx, exc)
        except (BackendError, BrokerError) as error:
            log.warning("Could not report %r to its workflow (%s); giving it back", request, error)
            request.requeue()
            return
        if dead_letter:
            request.dead_letter(dead_letter)
        else:
            request.ack()
