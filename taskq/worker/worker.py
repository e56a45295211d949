"""The worker: consume, dispatch to a pool, settle, shut down cleanly.

The consumer loop leases messages from the broker (at most
``concurrency * prefetch_multiplier`` outstanding, or more under a backlog of
short tasks: see ``_resize``), decodes them, and hands them to the pool. A rate-limited task that has no token yet is parked in the worker
(not counted against the prefetch until as many are parked as the prefetch
holds) and released when its token is due, so it delays only its own kind. A
heartbeat thread keeps this worker's leases alive; a control thread polls the
result backend once a second for running tasks revoked with ``terminate=True``
(see ``taskq.control``). Warm shutdown stops fetching, gives unstarted messages
back at once, lets running tasks finish within ``worker_shutdown_timeout`` and
then gives back what is still running; cold shutdown skips the wait.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import random
import signal
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from taskq import canvas, signals
from taskq.broker.base import Delivery, QueueSpec
from taskq.control import terminations
from taskq.errors import (
    BackendError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    TaskRevokedError,
    WorkerLostError,
)
from taskq.message import decode
from taskq.result import states
from taskq.worker import executor, limits
from taskq.worker.executor import ACK, DEAD_LETTER, REQUEUE, Outcome
from taskq.worker.options import WorkerOptions, expand_hostname, pool_settings
from taskq.worker.pools import make_pool
from taskq.worker.pools.base import Pool
from taskq.worker.ratelimit import RateLimiter, parse_rate
from taskq.worker.request import Request

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.broker.base import Broker

log = logging.getLogger("taskq.worker")

#: Seconds between two looks at the backend for running tasks revoked with terminate.
CONTROL_INTERVAL = 1.0
#: Longest a fetch blocks, so a stop is noticed this fast. The brokers poll about
#: this often when idle anyway (Redis: ``poll_interval``), so it costs nothing.
FETCH_TIMEOUT = 0.25

#: Under a backlog of short tasks the worker leases past its prefetch window: as many
#: messages as it settled in the last BATCH_SPAN seconds, up to BATCH_MAX (see ``_window``).
BATCH_SPAN = 0.02
BATCH_MAX = 64

#: Header counting how often the process running this message died (the poison guard).
LOST_HEADER = "x-taskq-worker-lost"


class Worker:
    """Consumes tasks for ``app`` until stopped."""

    def __init__(self, app: App, options: WorkerOptions | None = None) -> None:
        opts = options or WorkerOptions()
        conf = app.conf
        self.app = app
        self.hostname = expand_hostname(opts.hostname or conf.worker_hostname)
        self.queues = opts.queues or [conf.task_default_queue]
        self.pool_name = opts.pool or conf.worker_pool
        self.soft_time_limit, self.time_limit = opts.soft_time_limit, opts.time_limit
        self.pool: Pool = make_pool(self.pool_name, pool_settings(app, opts), app, self._settle)
        multiplier = opts.prefetch_multiplier or conf.worker_prefetch_multiplier
        self.capacity = max(1, self.pool.concurrency * multiplier)
        self._batching = multiplier > 1  # 1 is Celery's "hold no more than I run"
        self._window = self.capacity  # what may be leased now (see _resize)
        self._backlog = False  # the last fetch got all it asked for
        self._settled = 0  # requests settled so far, for _resize
        self._rate_mark = (time.monotonic(), 0)
        self.shutdown_timeout = (
            opts.shutdown_timeout
            if opts.shutdown_timeout is not None
            else conf.worker_shutdown_timeout
        )
        self._rates: dict[str, float | None] = {}
        for name in app.tasks:  # a bad rate limit stops start-up, not a task later
            self._rate_for(name)
        self.consumer_id = f"{self.hostname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.broker: Broker = app.new_broker(self.consumer_id)
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._cold = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._slot = threading.Event()
        # ETA messages (brokers without a delayed store), by unix time.
        self._held: list[tuple[float, int, Request]] = []
        # Rate-limited requests waiting for their token, by monotonic time.
        self._parked: list[tuple[float, int, Request]] = []
        self._limiter = RateLimiter()
        self._terminated: set[str] = set()
        self._seq = itertools.count()

    # -- lifecycle -------------------------------------------------------------------

    def run(self, burst: bool = False) -> None:
        """Consume until ``stop`` (or, with ``burst``, until the queues are empty)."""
        self.broker.declare(
            [QueueSpec(q, self.app.conf.task_queue_max_priority) for q in self.queues]
        )
        self.pool.start()
        for target, name in ((self._heartbeat, "heartbeat"), (self._watch_revokes, "control")):
            threading.Thread(target=target, name=f"taskq-{name}", daemon=True).start()
        self.ready.set()
        log.info("%s ready.", self.hostname)
        signals.worker_ready.send(self)
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

        received = itertools.count()

        def on_signal(signum: int, frame: Any) -> None:
            # One call, so a second signal handled inside this handler still counts
            # as the second (a check of ``_stopping`` could run before it is set).
            cold = next(received) > 0 or signum == signal.SIGQUIT
            self.stop(cold=cold)
            log.warning(
                "%s received: %s shutdown", signal.Signals(signum).name, "cold" if cold else "warm"
            )

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, on_signal)

    # -- consuming -------------------------------------------------------------------

    def _consume(self, burst: bool) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            self._release_due()
            free = self._free()
            if free <= 0:
                self._slot.wait(min(0.5, self._fetch_timeout(False)))
                self._slot.clear()
                continue
            try:
                deliveries = self.broker.fetch(
                    self.queues,
                    free,
                    self._fetch_timeout(burst),
                    read_ahead=self._window > self.capacity,  # short tasks, a backlog
                )
                self._backlog = len(deliveries) >= free
                self._resize()
                backoff = 0.1
            except BrokerError as exc:
                # Jitter, so a fleet of workers does not reconnect in lockstep.
                pause = backoff * random.uniform(0.5, 1.0)
                log.error("Broker connection error: %s; retrying in %.1fs", exc, pause)
                self._stopping.wait(pause)
                backoff = min(backoff * 2, 5.0)
                continue
            if self._stopping.is_set():
                self._requeue_fetched(deliveries)
                return
            if not deliveries and burst and self._idle():
                return
            self._accept(deliveries)

    def _free(self) -> int:
        """How many more messages to lease now (0: wait for a slot). Parked
        (rate-limited) requests count only beyond ``capacity`` of them, so they never
        starve other tasks of the prefetch. While the queues have a backlog (the last
        fetch was full) and every pool slot has work, the worker waits until half the
        window is free, so it leases in batches rather than one message per finished
        task (same window, fewer round trips)."""
        with self._lock:
            return self._free_locked()

    def _free_locked(self) -> int:
        window = self._window
        free = window - self._in_flight - max(0, len(self._parked) - self.capacity)
        busy = self._in_flight >= self.pool.concurrency
        if self._backlog and busy and free < max(1, window // 2):
            return 0
        return free

    def _resize(self) -> None:
        """Size the window for the next fetches: the prefetch window (concurrency x
        ``worker_prefetch_multiplier``), or under a backlog of short tasks as many as
        this worker settled in the last BATCH_SPAN seconds, at most BATCH_MAX. While
        the window is past the prefetch window the broker may also read the next
        batch ahead (``Broker.fetch``), so a worker then holds up to two windows of
        messages: at most about 2 x BATCH_SPAN seconds of its work. Tasks of a few
        milliseconds or more keep the prefetch window; no-op tasks lease 64 at a
        time. A multiplier of 1 turns this off."""
        now = time.monotonic()
        since, settled = self._rate_mark
        if now - since < 0.1:
            return
        rate = (self._settled - settled) / (now - since)
        self._rate_mark = (now, self._settled)
        batch = int(rate * BATCH_SPAN) if self._batching and self._backlog else 0
        self._window = min(BATCH_MAX, max(self.capacity, batch))

    def _fetch_timeout(self, burst: bool) -> float:
        timeout = 0.05 if burst else FETCH_TIMEOUT
        if self._held:
            timeout = min(timeout, max(0.0, self._held[0][0] - time.time()))
        if self._parked:
            timeout = min(timeout, max(0.0, self._parked[0][0] - time.monotonic()))
        return timeout

    def _idle(self) -> bool:
        with self._lock:
            return self._in_flight == 0 and not self._held and not self._parked

    def _requeue_fetched(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            try:
                self.broker.requeue(deliveries)
            except BrokerError as exc:
                log.error("Could not return %d message(s): %s", len(deliveries), exc)

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
        conf = self.app.conf
        task = self.app.tasks.get(message.task)
        late = task.acks_late if task is not None else None
        request.acks_late = conf.task_acks_late if late is None else late
        request.soft_time_limit, request.time_limit = limits.resolve(
            conf, task, message, self.soft_time_limit, self.time_limit
        )
        limit = conf.task_max_delivery_attempts
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
        heapq.heappush(self._held, (eta, next(self._seq), request))

    def _release_due(self) -> None:
        now, clock = time.time(), time.monotonic()
        while self._parked and self._parked[0][0] <= clock:
            self._submit(heapq.heappop(self._parked)[2])
        while self._held and self._held[0][0] <= now:
            self._start(heapq.heappop(self._held)[2])

    def _start(self, request: Request) -> None:
        rate = self._rate_for(request.name)
        if rate:
            wait = self._limiter.reserve(request.name, rate)
            if wait > 0:
                at = time.monotonic() + wait
                heapq.heappush(self._parked, (at, next(self._seq), request))
                return
        self._submit(request)

    def _submit(self, request: Request) -> None:
        with self._lock:
            self._in_flight += 1
        self.pool.submit(request)

    def _rate_for(self, name: str) -> float | None:
        """Tasks per second allowed for ``name`` on this worker (None: no limit)."""
        if name not in self._rates:
            task = self.app.tasks.get(name)
            own = task.rate_limit if task is not None else None
            text = own if own is not None else self.app.conf.task_default_rate_limit
            try:
                self._rates[name] = parse_rate(text)
            except ConfigurationError as exc:
                raise ConfigurationError(f"Task {name!r}: {exc}") from None
        return self._rates[name]

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
        if state == states.REVOKED:
            task = self.app.tasks.get(request.name)
            signals.task_revoked.send(
                task, request=ctx, terminated=False, signum=None, expired=False
            )
        if reason:
            log.info("Task %s[%s] %s: not run", request.name, request.id, reason)
        try:
            # A task that never ran still fails its workflow: errbacks run and its
            # chord fails instead of waiting forever for it.
            canvas.on_failure(self.app, ctx, exc)
        except (BackendError, BrokerError) as error:
            log.warning("Could not report %r to its workflow (%s); giving it back", request, error)
            request.requeue()
            return
        if dead_letter:
            request.dead_letter(dead_letter)
        else:
            request.ack()

    # -- settling (called by the pool when a request is done) -------------------------

    def _settle(self, request: Request, outcome: Outcome) -> None:
        """What the pool calls once per request it ran. A request already settled
        (acked at start, or given back by a cold shutdown) stays as it is."""
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
                self._settled += 1
                # Wake the consumer only once it may fetch (see _free): not a thread
                # switch per finished task while it waits for half the window.
                wake = self._free_locked() > 0
            if wake and not self._slot.is_set():  # set: the consumer will look anyway
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
        if request.settled:  # acked when it started (acks_late off): it is lost
            executor.store(
                self.app, None, request.context(), states.FAILURE, WorkerLostError(reason)
            )
            return
        if not redeliver:
            self._finish_unrun(request, WorkerLostError(reason), None)
            return
        env = request.delivery.envelope
        headers = {**env.headers, LOST_HEADER: int(env.headers.get(LOST_HEADER) or 0) + 1}
        try:
            self.broker.publish(
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

    # -- background ------------------------------------------------------------------

    def _heartbeat(self) -> None:
        # Until every message is settled or given back, also during a warm shutdown.
        interval = self.app.conf.worker_lease_timeout / 3
        while not self._closed.wait(interval):
            try:
                self.broker.heartbeat()
            except BrokerError as exc:
                log.warning("Heartbeat failed: %s", exc)

    def _watch_revokes(self) -> None:
        """Terminate running tasks revoked with ``terminate=True`` (see ``taskq.control``)."""
        backend = self.app.backend
        while backend is not None and not self._closed.wait(CONTROL_INTERVAL):
            ids = [r.id for r in self.pool.running() if r.id not in self._terminated]
            try:
                found = terminations(backend, ids)
            except BackendError as exc:
                log.warning("Could not check revoked ids: %s", exc)
                continue
            for task_id, signum in found.items():
                self._terminated.add(task_id)
                if self.pool.terminate(task_id, signum):
                    log.info("Terminating task %s with %s", task_id, signal.Signals(signum).name)

    def _shutdown(self) -> None:
        unstarted = self.pool.take_unstarted() + [item[2] for item in self._held + self._parked]
        self._held.clear()
        self._parked.clear()
        self._give_back(unstarted, "unstarted")
        try:
            self.broker.give_back_read_ahead()
        except BrokerError as exc:
            log.error("Could not return messages read ahead: %s (their lease will expire)", exc)
        if not self._cold:
            self._drain()
        running = self.pool.running()
        if running:
            log.warning("Giving back %d task(s) still running", len(running))
        self.pool.stop()
        self._give_back(running, "running")
        self._closed.set()
        self.broker.close()
        log.info("%s stopped.", self.hostname)
        signals.worker_shutdown.send(self)

    def _drain(self) -> None:
        """Wait for running tasks until ``shutdown_timeout`` passes or a cold stop."""
        deadline = time.monotonic() + self.shutdown_timeout
        waiting = self.pool.running()
        if waiting:
            log.info(
                "Warm shutdown: waiting up to %gs for %d running task(s)",
                self.shutdown_timeout,
                len(waiting),
            )
        while not self._cold:
            remaining = deadline - time.monotonic()
            if self.pool.join(max(0.0, min(0.2, remaining))):
                return
            if remaining <= 0:
                log.warning("Tasks still running after %gs", self.shutdown_timeout)
                return

    def _give_back(self, requests: list[Request], what: str) -> None:
        if not requests:
            return
        log.info("Returning %d %s message(s) to the broker", len(requests), what)
        for request in requests:
            try:
                request.requeue()
            except BrokerError as exc:
                log.error("Could not return %r: %s (its lease will expire)", request, exc)
