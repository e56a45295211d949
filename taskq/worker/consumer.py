"""The consumer: lease messages, turn them into requests, and start or hold them.

One thread runs ``Consumer.run``: it asks the ``Window`` how many messages it may
lease, fetches them (blocking at most ``Timing.fetch_timeout``, so a stop is seen
quickly), decodes each into a ``Request`` with its task's policy, and then:
revoked requests are recorded and acked without running; requests whose ETA is in
the future go back to the broker's delayed store, or wait in the ``Holding``
area on brokers without one; rate-limited ones wait there for their token; the
rest go to the pool. Broker errors are retried with jittered backoff.

A request is revoked when the result backend says so (``taskq.control.revokes``)
or when remote control's broadcast ``revoke`` named it (``revoke``: remembered
here, the newest ``REVOKES_MAX``; one revoked while it waits in the holding area
does not start either). Remote control changes the queues consumed
(``add_queue``, ``cancel_queue``) on this thread, before the next fetch. With
task events on, ``task-received`` is sent for each request decoded.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskq.errors import (
    BackendError,
    BrokerError,
    DecodeError,
    SecurityError,
    TaskRevokedError,
    WorkerLostError,
)
from taskq.message import decode, worker_lost_count
from taskq.worker import monitor
from taskq.worker.holding import Holding
from taskq.worker.policy import Policies
from taskq.worker.request import Request
from taskq.worker.settlement import Settlement
from taskq.worker.timing import Clock, Timing
from taskq.worker.window import Window

if TYPE_CHECKING:
    from taskq.backends.store import ResultStore
    from taskq.broker.base import Broker, Delivery
    from taskq.config import Settings
    from taskq.events import EventDispatcher
    from taskq.queues import QueueSpec
    from taskq.security import Sealer
    from taskq.task import Task

__all__ = ["REVOKES_MAX", "Consumer"]

log = logging.getLogger("taskq.worker")

#: Revoked ids a worker remembers from remote control (Celery's REVOKES_MAX).
REVOKES_MAX = 50_000


class Consumer:
    """Feeds the pool from the broker; see the module docstring.

    Args:
        tasks: the task registry (a message for a task not in it is kept in the
            dead-letter queue: ``Settlement.not_registered``).
        submit: hands a request to the pool (``Pool.submit``).
        events: where ``task-received`` goes (sent only while ``events.task_events``).
        sealer: opens signed messages and refuses the others (``taskq.security``).
    """

    def __init__(
        self,
        *,
        broker: Broker,
        queues: Sequence[str],
        conf: Settings,
        tasks: Mapping[str, Task[Any, Any]],
        results: ResultStore,
        policies: Policies,
        hostname: str,
        window: Window,
        holding: Holding,
        settlement: Settlement,
        submit: Callable[[Request], None],
        timing: Timing,
        clock: Clock,
        events: EventDispatcher,
        sealer: Sealer | None = None,
    ) -> None:
        self.broker = broker
        #: The queues consumed now; replaced (never changed in place) by remote control.
        self.queues = list(queues)
        self._conf = conf
        self._tasks = tasks
        self._results = results
        self._policies = policies
        self._hostname = hostname
        self._window = window
        self._holding = holding
        self._settlement = settlement
        self._submit = submit
        self._timing = timing
        self._clock = clock
        self._sealer = sealer
        self._events = events
        self._revokes: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._revokes_lock = threading.Lock()
        self._changes: collections.deque[Callable[[], None]] = collections.deque()

    def run(self, stopping: threading.Event, burst: bool = False) -> None:
        """Consume until ``stopping`` is set (or, with ``burst``, until the queues and
        this worker are empty). What was fetched when the stop came goes back."""
        backoff = 0.1
        self._settlement.hold_here()
        while not stopping.is_set():
            self.apply_changes()
            self._start_all(self._released())
            # Results of the tasks run on this thread (solo), then their acks, before
            # fetching or waiting: one write for the batch (taskq.worker.results).
            self._settlement.flush_held()
            free = self._window.free(self._holding.parked)
            if free <= 0:
                self._window.wait(min(0.5, self._wait(False)))
                continue
            try:
                deliveries = self.broker.fetch(
                    self.queues, free, self._wait(burst), read_ahead=self._window.read_ahead
                )
                self._window.fetched(len(deliveries), free)
                backoff = 0.1
            except BrokerError as exc:
                # Jitter, so a fleet of workers does not reconnect in lockstep.
                pause = backoff * random.uniform(0.5, 1.0)
                log.error("Broker connection error: %s; retrying in %.1fs", exc, pause)
                stopping.wait(pause)
                backoff = min(backoff * 2, 5.0)
                continue
            if stopping.is_set():
                self._give_back(deliveries)
                return
            if not deliveries and burst and self._idle():
                return
            self._accept(deliveries)

    def apply_changes(self) -> None:
        """Apply remote control's changes (``add_queue``, ``cancel_queue``) on this thread."""
        while self._changes:
            self._changes.popleft()()

    def _wait(self, burst: bool) -> float:
        timing = self._timing
        return self._holding.wait_at_most(
            timing.burst_fetch_timeout if burst else timing.fetch_timeout
        )

    def _idle(self) -> bool:
        return self._window.in_flight == 0 and not self._holding

    def _give_back(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            try:
                self.broker.requeue(deliveries)
            except BrokerError as exc:
                log.error("Could not return %d message(s): %s", len(deliveries), exc)

    def _accept(self, deliveries: list[Delivery]) -> None:
        requests = [r for r in map(self._received, deliveries) if r is not None]
        revoked = self._revoked([r.id for r in requests])
        now = self._clock.time()
        ready = []
        for request in requests:
            try:
                if self._place(request, request.id in revoked, now):
                    ready.append(request)
            except Exception as exc:  # one message never ends the worker (issue 12)
                self._settlement.escaped(request.delivery, exc, "accepting it")
        self._start_all(ready)

    def _place(self, request: Request, revoked: bool, now: float) -> bool:
        """Settle (revoked), hold (ETA, rate limit) or admit one request: True when it
        may start now."""
        if revoked:
            error = TaskRevokedError(f"task {request.id} was revoked")
            self._settlement.finish_unrun(request, error, "revoked")
            return False
        eta = request.message.eta
        if eta is not None and eta.timestamp() > now:
            self._hold(request, eta.timestamp())
            return False
        return self._holding.admit(request)

    def _received(self, delivery: Delivery) -> Request | None:
        """The request for ``delivery``, or None when it was settled here: dead-lettered
        (undecodable, delivered too often, unknown task) or failed unrun."""
        try:
            return self._decode(delivery)
        except Exception as exc:  # one message never ends the worker (issue 12)
            self._settlement.escaped(delivery, exc, "reading it")
            return None

    def _decode(self, delivery: Delivery) -> Request | None:
        envelope = delivery.envelope
        limit = self._conf.task_max_delivery_attempts
        try:
            # Counted before decoding: a message that ends its process while being
            # read must reach the dead-letter queue as surely as one that does so running.
            attempts = delivery.delivery_count + worker_lost_count(envelope.headers)
            if self._sealer is not None:
                envelope = self._sealer.open(envelope)
            message = decode(envelope, self._conf.accept_content)
        except DecodeError as exc:
            what = "refused" if isinstance(exc, SecurityError) else "malformed"
            log.error("Message in %r %s: %s", delivery.queue, what, exc)
            self.broker.dead_letter(delivery, f"{what}: {exc}")
            return None
        request = Request(delivery, message, self.broker, self._hostname, envelope.headers)
        if attempts > limit:
            reason = f"delivered {attempts} times and its process died each time (limit {limit})"
            self._settlement.finish_unrun(request, WorkerLostError(reason), None, reason)
            return None
        if message.task not in self._tasks:
            self._settlement.not_registered(request)
            return None
        policy = self._policies[message.task]
        request.acks_late = policy.acks_late
        request.soft_time_limit, request.time_limit = policy.limits_for(message)
        events = self._events
        if events.task_events:
            request.events = events  # for task-started
            monitor.received(events, request)
        log.info("Task %s[%s] received", message.task, message.id)
        return request

    def _revoked(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` were revoked: by broadcast (remembered here) or in the
        result backend."""
        found: set[str] = set()
        if self._revokes:
            with self._revokes_lock:
                found = {i for i in ids if i in self._revokes}
        backend = self._results.backend
        if backend is None or not ids:
            return found
        try:
            return found | backend.revoked(ids)
        except BackendError as exc:
            log.warning("Could not check revoked ids: %s", exc)
            return found

    # -- what remote control changes (taskq.worker.remote) -------------------------------

    def revoke(self, ids: Iterable[str]) -> None:
        """Never start ``ids`` (those received from now on are recorded as revoked);
        the newest ``REVOKES_MAX`` are remembered."""
        with self._revokes_lock:
            for task_id in ids:
                self._revokes[task_id] = None
                self._revokes.move_to_end(task_id)
            while len(self._revokes) > REVOKES_MAX:
                self._revokes.popitem(last=False)

    def revoked_ids(self) -> list[str]:
        """The ids revoked through ``revoke``, oldest first."""
        with self._revokes_lock:
            return list(self._revokes)

    def add_queue(self, name: str) -> bool:
        """Start consuming ``name`` (declared as the app's queue table says, then
        fetched from, before the next fetch); False if it is consumed already.

        Raises:
            ConfigurationError: the queue table has no ``name`` and
                ``task_create_missing_queues`` is off.
        """
        if name in self.queues:
            return False
        spec = self.broker.queues[name]
        self._change(lambda: self._add_queue(spec))
        return True

    def cancel_queue(self, name: str) -> bool:
        """Stop consuming ``name`` from the next fetch; False if it is not consumed.

        Raises:
            ValueError: ``name`` is the only queue consumed.
        """
        if name not in self.queues:
            return False
        if len(self.queues) == 1:
            raise ValueError(f"{name!r} is the only queue consumed")
        self._change(lambda: self._cancel_queue(name))
        return True

    def _change(self, change: Callable[[], None]) -> None:
        self._changes.append(change)
        self._window.wake()

    def _add_queue(self, spec: QueueSpec) -> None:
        name = spec.name
        if name in self.queues:
            return
        try:
            self.broker.declare([spec])
        except BrokerError as exc:
            log.error("Could not declare queue %r to consume it: %s", name, exc)
            return
        self.queues = [*self.queues, name]
        log.info("Consuming from %r too (remote control)", name)

    def _cancel_queue(self, name: str) -> None:
        remaining = [q for q in self.queues if q != name]
        if remaining and len(remaining) < len(self.queues):
            self.queues = remaining
            log.info("No longer consuming from %r (remote control)", name)

    def _hold(self, request: Request, eta: float) -> None:
        if self.broker.supports_delayed:
            # Hand it to the broker's delayed store rather than hold it in memory:
            # publish the copy first, then ack, so a crash in between duplicates
            # rather than loses.
            env = request.delivery.envelope
            try:
                self.broker.publish(
                    env, request.delivery.queue, priority=env.properties.get("priority"), eta=eta
                )
            except BrokerError as exc:
                log.warning("Could not re-delay %r (%s); holding it until its ETA", request, exc)
            else:
                request.ack()
                return
        self._holding.hold(request, eta)

    def _released(self) -> list[Request]:
        """What the holding area lets start now, less what remote control revoked
        while it waited (an ETA or a rate limit)."""
        released = self._holding.release()
        if not released or not self._revokes:
            return released
        with self._revokes_lock:
            revoked = {r.id for r in released if r.id in self._revokes}
        for request in released:
            if request.id in revoked:
                error = TaskRevokedError(f"task {request.id} was revoked")
                self._settlement.finish_unrun(request, error, "revoked")
        return [r for r in released if r.id not in revoked]

    def _start_all(self, requests: list[Request]) -> None:
        for request in requests:
            self._window.started()
            self._submit(request)
