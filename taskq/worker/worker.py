"""The worker: consume, dispatch to a pool, settle, shut down cleanly.

The consumer loop leases messages from the broker (at most
``concurrency * prefetch_multiplier`` outstanding), decodes them, and hands them
to the pool. A heartbeat thread keeps this worker's leases alive. Warm shutdown
stops fetching, gives unstarted messages back at once, lets running tasks finish
within ``worker_shutdown_timeout`` and then gives back what is still running.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from taskq.broker.base import Delivery, QueueSpec
from taskq.errors import BackendError, BrokerError, DecodeError, TaskRevokedError, WorkerLostError
from taskq.message import decode
from taskq.result import states
from taskq.worker import executor
from taskq.worker.executor import ACK, DEAD_LETTER, REQUEUE, Outcome
from taskq.worker.pools import Pool, make_pool
from taskq.worker.request import Request

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.broker.base import Broker

log = logging.getLogger("taskq.worker")

POOLS = ("threads", "solo")

#: Header counting how often the process running this message died (the poison guard).
LOST_HEADER = "x-taskq-worker-lost"


@dataclasses.dataclass
class WorkerOptions:
    """How a worker runs; None means "use the app's setting"."""

    queues: list[str] | None = None
    concurrency: int | None = None
    pool: str | None = None
    hostname: str | None = None
    prefetch_multiplier: int | None = None
    shutdown_timeout: float | None = None


def expand_hostname(name: str | None) -> str:
    """Celery's node name: ``%h`` is the host name, ``%n`` its first label."""
    host = socket.gethostname()
    name = name or "taskq@%h"
    return name.replace("%h", host).replace("%n", host.split(".")[0])


class Worker:
    """Consumes tasks for ``app`` until stopped."""

    def __init__(self, app: App, options: WorkerOptions | None = None) -> None:
        opts = options or WorkerOptions()
        conf = app.conf
        self.app = app
        self.hostname = expand_hostname(opts.hostname or conf.worker_hostname)
        self.queues = opts.queues or [conf.task_default_queue]
        pool_name = opts.pool or conf.worker_pool
        if pool_name == "prefork":
            # The prefork pool arrives with the worker issue; threads serve until then.
            pool_name = "threads"
        if pool_name not in POOLS:
            raise ValueError(f"Unknown pool {pool_name!r}; choose one of {', '.join(POOLS)}.")
        self.pool_name = pool_name
        concurrency = (
            1
            if pool_name == "solo"
            else (opts.concurrency or conf.worker_concurrency or os.cpu_count() or 1)
        )
        self.pool: Pool = make_pool(pool_name, concurrency, app, self._settle)
        multiplier = opts.prefetch_multiplier or conf.worker_prefetch_multiplier
        self.capacity = max(1, concurrency * multiplier)
        self.shutdown_timeout = (
            opts.shutdown_timeout
            if opts.shutdown_timeout is not None
            else conf.worker_shutdown_timeout
        )
        self.consumer_id = f"{self.hostname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.broker: Broker = app.new_broker(self.consumer_id)
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._cold = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._slot = threading.Event()
        self._held: list[
            tuple[float, int, Request]
        ] = []  # ETA messages (brokers without a delayed store)
        self._seq = itertools.count()

    # -- lifecycle -------------------------------------------------------------------

    def run(self, burst: bool = False) -> None:
        """Consume until ``stop`` (or, with ``burst``, until the queues are empty)."""
        self.broker.declare(
            [QueueSpec(q, self.app.conf.task_queue_max_priority) for q in self.queues]
        )
        self.pool.start()
        heartbeat = threading.Thread(target=self._heartbeat, name="taskq-heartbeat", daemon=True)
        heartbeat.start()
        self.ready.set()
        log.info("%s ready.", self.hostname)
        try:
            self._consume(burst)
        finally:
            self._shutdown()

    def stop(self, cold: bool = False) -> None:
        """Ask the worker to stop: warm (finish running tasks) or cold (give them back)."""
        self._cold = self._cold or cold
        self._stopping.set()
        self._slot.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: warm shutdown, the second one cold; SIGQUIT: cold."""

        def on_signal(signum: int, frame: Any) -> None:
            cold = signum == signal.SIGQUIT or self._stopping.is_set()
            log.warning(
                "%s received: %s shutdown", signal.Signals(signum).name, "cold" if cold else "warm"
            )
            self.stop(cold=cold)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, on_signal)

    # -- consuming -------------------------------------------------------------------

    def _consume(self, burst: bool) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            self._release_due()
            with self._lock:
                free = self.capacity - self._in_flight
            if free <= 0:
                self._slot.wait(0.5)
                self._slot.clear()
                continue
            try:
                deliveries = self.broker.fetch(self.queues, free, self._fetch_timeout(burst))
                backoff = 0.1
            except BrokerError as exc:
                log.error("Broker connection error: %s; retrying in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not deliveries and burst and self._idle():
                return
            self._accept(deliveries)

    def _fetch_timeout(self, burst: bool) -> float:
        timeout = 0.05 if burst else 1.0
        if self._held:
            timeout = min(timeout, max(0.0, self._held[0][0] - time.time()))
        return timeout

    def _idle(self) -> bool:
        with self._lock:
            return self._in_flight == 0 and not self._held

    def _accept(self, deliveries: list[Delivery]) -> None:
        requests = [r for r in map(self._decode, deliveries) if r is not None]
        revoked = self._revoked([r.id for r in requests])
        now = time.time()
        for request in requests:
            if request.id in revoked:
                self._finish_unrun(
                    request, TaskRevokedError(f"task {request.id} was revoked"), "revoked"
                )
                continue
            eta = request.message.eta
            if eta is not None and eta.timestamp() > now:
                self._hold(request, eta.timestamp())
                continue
            self._start(request)

    def _decode(self, delivery: Delivery) -> Request | None:
        try:
            message = decode(delivery.envelope, self.app.conf.accept_content)
        except DecodeError as exc:
            log.error("Malformed message in %r: %s", delivery.queue, exc)
            self.broker.dead_letter(delivery, f"malformed: {exc}")
            return None
        request = Request(delivery, message, self.broker, self.hostname)
        limit = self.app.conf.task_max_delivery_attempts
        attempts = delivery.delivery_count + int(delivery.envelope.headers.get(LOST_HEADER) or 0)
        if attempts > limit:
            reason = f"delivered {attempts} times and its process died each time (limit {limit})"
            self._finish_unrun(request, WorkerLostError(reason), None, dead_letter=reason)
            return None
        log.info("Task %s[%s] received", message.task, message.id)
        return request

    def _revoked(self, ids: list[str]) -> set[str]:
        backend = self.app.backend
        if backend is None or not ids:
            return set()
        try:
            return backend.revoked(ids)
        except BackendError as exc:
            log.warning("Could not check revoked ids: %s", exc)
            return set()

    def _hold(self, request: Request, eta: float) -> None:
        if self.broker.supports_delayed:
            # Hand it to the broker's delayed store rather than hold it in memory.
            self.broker.publish(request.delivery.envelope, request.delivery.queue, eta=eta)
            request.ack()
            return
        heapq.heappush(self._held, (eta, next(self._seq), request))

    def _release_due(self) -> None:
        now = time.time()
        while self._held and self._held[0][0] <= now:
            self._start(heapq.heappop(self._held)[2])

    def _start(self, request: Request) -> None:
        with self._lock:
            self._in_flight += 1
        self.pool.submit(request)

    def _finish_unrun(
        self,
        request: Request,
        exc: BaseException,
        reason: str | None,
        dead_letter: str | None = None,
    ) -> None:
        ctx = request.context()
        state = states.REVOKED if isinstance(exc, TaskRevokedError) else states.FAILURE
        executor.store(self.app, None, ctx, state, exc)
        if reason:
            log.info("Task %s[%s] %s: not run", request.name, request.id, reason)
        if dead_letter:
            request.dead_letter(dead_letter)
        else:
            request.ack()

    # -- settling (called by the pool when a request is done) -------------------------

    def _settle(self, request: Request, outcome: Outcome) -> None:
        try:
            if outcome.action == ACK:
                request.ack()
            elif outcome.action == REQUEUE:
                request.requeue()
            elif outcome.action == DEAD_LETTER:
                request.dead_letter(outcome.reason)
            else:
                self._worker_lost(request, outcome.reason)
        except Exception:
            log.exception("Could not settle %r; its lease will return it", request)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._slot.set()

    def _worker_lost(self, request: Request, reason: str) -> None:
        """The process running the task died. Redeliver it (counting the attempt, so a
        task that kills its process every time ends in the dead-letter queue) or, with
        ``reject_on_worker_lost`` off, record the failure."""
        task = self.app.tasks.get(request.name)
        redeliver = (
            task.reject_on_worker_lost
            if task and task.reject_on_worker_lost is not None
            else self.app.conf.task_reject_on_worker_lost
        )
        log.error("Task %s[%s]: %s", request.name, request.id, reason)
        if not redeliver:
            self._finish_unrun(request, WorkerLostError(reason), None)
            return
        env = request.delivery.envelope
        headers = {**env.headers, LOST_HEADER: int(env.headers.get(LOST_HEADER) or 0) + 1}
        self.broker.publish(dataclasses.replace(env, headers=headers), request.delivery.queue)
        request.ack()

    # -- background ------------------------------------------------------------------

    def _heartbeat(self) -> None:
        interval = self.app.conf.worker_lease_timeout / 3
        while not self._stopping.wait(interval):
            try:
                self.broker.heartbeat()
            except BrokerError as exc:
                log.warning("Heartbeat failed: %s", exc)

    def _shutdown(self) -> None:
        unstarted = self.pool.take_unstarted() + [item[2] for item in self._held]
        self._held.clear()
        self._give_back(unstarted, "unstarted")
        if not self._cold and not self.pool.join(self.shutdown_timeout):
            log.warning("Tasks still running after %.1fs; giving them back", self.shutdown_timeout)
        self._give_back(self.pool.running(), "running")
        self.pool.stop()
        self.broker.close()
        log.info("%s stopped.", self.hostname)

    def _give_back(self, requests: list[Request], what: str) -> None:
        if not requests:
            return
        log.info("Returning %d %s message(s) to the broker", len(requests), what)
        for request in requests:
            try:
                request.requeue()
            except BrokerError as exc:
                log.error("Could not return %r: %s (its lease will expire)", request, exc)
