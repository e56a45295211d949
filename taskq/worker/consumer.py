"""The consumer: lease messages, turn them into requests, and start or hold them.

One thread runs ``Consumer.run``: it asks the ``Window`` how many messages it may
lease, fetches them (blocking at most ``Timing.fetch_timeout``, so a stop is seen
quickly), decodes each into a ``Request`` with its task's policy, and then:
revoked requests are recorded and acked without running; requests whose ETA is in
the future go back to the broker's delayed store, or wait in the ``Holding``
area on brokers without one; rate-limited ones wait there for their token; the
rest go to the pool. Broker errors are retried with jittered backoff.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from taskq.errors import BackendError, BrokerError, DecodeError, TaskRevokedError, WorkerLostError
from taskq.message import decode
from taskq.worker.holding import Holding
from taskq.worker.policy import Policies
from taskq.worker.request import Request
from taskq.worker.settlement import Settlement, lost_count
from taskq.worker.timing import Clock, Timing
from taskq.worker.window import Window

if TYPE_CHECKING:
    from taskq.backends.store import ResultStore
    from taskq.broker.base import Broker, Delivery
    from taskq.config import Settings

__all__ = ["Consumer"]

log = logging.getLogger("taskq.worker")


class Consumer:
    """Feeds the pool from the broker; see the module docstring.

    Args:
        submit: hands a request to the pool (``Pool.submit``).
    """

    def __init__(
        self,
        *,
        broker: Broker,
        queues: Sequence[str],
        conf: Settings,
        results: ResultStore,
        policies: Policies,
        hostname: str,
        window: Window,
        holding: Holding,
        settlement: Settlement,
        submit: Callable[[Request], None],
        timing: Timing,
        clock: Clock,
    ) -> None:
        self.broker = broker
        self.queues = list(queues)
        self._conf = conf
        self._results = results
        self._policies = policies
        self._hostname = hostname
        self._window = window
        self._holding = holding
        self._settlement = settlement
        self._submit = submit
        self._timing = timing
        self._clock = clock

    def run(self, stopping: threading.Event, burst: bool = False) -> None:
        """Consume until ``stopping`` is set (or, with ``burst``, until the queues and
        this worker are empty). What was fetched when the stop came goes back."""
        backoff = 0.1
        while not stopping.is_set():
            self._start_all(self._holding.release())
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
        requests = [r for r in map(self._decode, deliveries) if r is not None]
        revoked = self._revoked([r.id for r in requests])
        now = self._clock.time()
        ready = []
        for request in requests:
            if request.id in revoked:
                error = TaskRevokedError(f"task {request.id} was revoked")
                self._settlement.finish_unrun(request, error, "revoked")
                continue
            eta = request.message.eta
            if eta is not None and eta.timestamp() > now:
                self._hold(request, eta.timestamp())
            elif self._holding.admit(request):
                ready.append(request)
        self._start_all(ready)

    def _decode(self, delivery: Delivery) -> Request | None:
        try:
            message = decode(delivery.envelope, self._conf.accept_content)
        except DecodeError as exc:
            log.error("Malformed message in %r: %s", delivery.queue, exc)
            self.broker.dead_letter(delivery, f"malformed: {exc}")
            return None
        policy = self._policies[message.task]
        request = Request(delivery, message, self.broker, self._hostname)
        request.acks_late = policy.acks_late
        request.soft_time_limit, request.time_limit = policy.limits_for(message)
        limit = self._conf.task_max_delivery_attempts
        attempts = delivery.delivery_count + lost_count(delivery.envelope.headers)
        if attempts > limit:
            reason = f"delivered {attempts} times and its process died each time (limit {limit})"
            self._settlement.finish_unrun(request, WorkerLostError(reason), None, reason)
            return None
        log.info("Task %s[%s] received", message.task, message.id)
        return request

    def _revoked(self, ids: list[str]) -> set[str]:
        backend = self._results.backend
        if backend is None or not ids:
            return set()
        try:
            return backend.revoked(ids)
        except BackendError as exc:
            log.warning("Could not check revoked ids: %s", exc)
            return set()

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

    def _start_all(self, requests: list[Request]) -> None:
        for request in requests:
            self._window.started()
            self._submit(request)
