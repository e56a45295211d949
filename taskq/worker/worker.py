"""The worker: its parts wired together, and their lifecycle.

A ``Worker`` composes, in its constructor: each task's ``Policy``, the
``Executor`` (runs one task, records its outcome), the pool (where tasks run),
the ``Settlement`` (the pool's ``done``: ack, requeue, dead-letter, redeliver), the
``HeldResults`` (results written in batches, each before its messages' acks), the
``Window`` (how many messages may be leased), the ``Holding`` area (ETA and
rate-limited requests) and the ``Consumer`` (fetch, decode, start or hold). Two
background threads keep this worker's leases alive (heartbeat) and terminate
running tasks revoked with ``terminate=True`` (see ``taskq.control``); in a
gevent or eventlet process a thread of the OS also renews the lease
(``taskq.worker.lease``).

Monitoring (docs/monitoring.md): an ``EventDispatcher`` sends worker events
(online, a heartbeat every ``worker_heartbeat_interval``, offline) and, while
task events are on, the consumer, the pool's requests and the settlement send
task events; a ``ControlServer`` answers remote control through ``RemoteHandle``.
Both need a broker that can broadcast (Redis, RabbitMQ). With a metrics port
(``--metrics-port``) the worker serves Prometheus metrics without events
(``taskq.metrics.worker``): the executor and the settlement count outcomes, in
prefork children too, and a scrape reads the pool and the holding area.

Warm shutdown stops fetching, gives unstarted messages back at once, lets
running tasks finish within ``worker_shutdown_timeout`` and then gives back what
is still running; cold shutdown skips the wait.

A pool whose children consume on their own (``Pool.consumes``: prefork on Redis,
``taskq.worker.pools.prefork.consuming``) leaves this worker's consumer idle: the
worker then only answers remote control, sends worker events and supervises, and
each child runs a ``supervised`` worker of its own (no remote control, no worker
events, no revoke watch: the parent does those for all of them).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from taskq import monkey, signals
from taskq.broker.startup import connect_on_startup
from taskq.control import terminations
from taskq.control.mailbox import mailbox
from taskq.control.server import ControlServer
from taskq.errors import BackendError, BrokerError, ConfigurationError
from taskq.events import EventDispatcher, broadcasts, connect, redacted_fields
from taskq.metrics import require
from taskq.queues import Queues
from taskq.security.commands import CommandVerifier
from taskq.urls import mask_url
from taskq.worker.consumer import Consumer
from taskq.worker.executor import Executor
from taskq.worker.holding import Holding
from taskq.worker.lease import LeaseKeeper
from taskq.worker.options import WorkerOptions, expand_hostname, pool_settings
from taskq.worker.policy import Policies
from taskq.worker.pools import make_pool
from taskq.worker.pools.base import Pool, PoolMaker
from taskq.worker.remote import RemoteHandle
from taskq.worker.request import Request
from taskq.worker.results import HeldResults
from taskq.worker.settlement import Settlement
from taskq.worker.timing import SYSTEM_CLOCK, Clock, Timing
from taskq.worker.window import Window

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.broker.base import Broker
    from taskq.metrics.server import MetricsServer
    from taskq.metrics.worker import Live, WorkerMeter, WorkerMetrics

log = logging.getLogger("taskq.worker")


class Worker:
    """Consumes tasks for ``app`` until stopped.

    Args:
        app: the app whose tasks run.
        options: how to run (None: the app's settings).
        timing: the intervals the worker waits on (tests shorten them).
        clock: where the worker reads the time (tests may drive it).
        supervised: makes the pool of a worker inside a prefork child that
            consumes on its own (``supervised_worker``); None for a worker.

    Raises:
        ConfigurationError: a bad option or a task option that cannot be used.
    """

    def __init__(
        self,
        app: App,
        options: WorkerOptions | None = None,
        *,
        timing: Timing | None = None,
        clock: Clock = SYSTEM_CLOCK,
        supervised: PoolMaker | None = None,
        meter: WorkerMeter | None = None,
    ) -> None:
        opts = options or WorkerOptions()
        #: As given (a consuming prefork child builds its own worker from them).
        self.options = opts
        #: Set in a consuming prefork child: its pool, made with the worker's parts.
        self.supervised = supervised is not None
        timing = timing or Timing()
        conf = app.conf
        self.app = app
        self.timing = timing
        self.hostname = expand_hostname(opts.hostname or conf.worker_hostname)
        # Without -Q: every queue of task_queues (only task_default_queue without it).
        self.queues = opts.queues or Queues.from_settings(conf).names()
        self.pool_name = opts.pool or conf.worker_pool
        self.policies = Policies(app.tasks, conf, opts.soft_time_limit, opts.time_limit)
        self.policies.resolve_all()  # a bad rate limit stops start-up, not a task later
        self.shutdown_timeout = (
            opts.shutdown_timeout
            if opts.shutdown_timeout is not None
            else conf.worker_shutdown_timeout
        )
        # Load the result backend now (it connects later): a backend whose extra is not
        # installed stops start-up with its message, not a background thread (issue 11).
        app.results.backend  # noqa: B018
        self.consumer_id = f"{self.hostname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.broker: Broker = app.new_broker(self.consumer_id)
        self._metrics_at = ("", 0)  # (host, port), when metrics are on
        # A consuming prefork child counts into its parent's meter (``meter``, which
        # came with the fork): only the parent serves the port.
        self.metrics = None if supervised else self._metrics(opts)
        if self.metrics is not None:
            meter = self.metrics.meter
        self.executor = Executor(app, self.policies, meter)
        backend = app.results.backend
        if backend is not None:
            # Results written in batches, each before the acks of its messages.
            self.executor.held = HeldResults(backend)
        self.holding = Holding(self.policies, clock)
        settings = pool_settings(app, opts)
        multiplier = opts.prefetch_multiplier or conf.worker_prefetch_multiplier
        self.window = Window(
            # A consuming prefork child leases one message at a time unless short
            # tasks batch: what it holds waits behind its running task.
            capacity=1 if supervised else max(1, settings.concurrency * multiplier),
            concurrency=settings.concurrency,
            batching=multiplier > 1,
            timing=timing,
            clock=clock,
        )
        self.started_at = time.time()
        self.events = self._event_dispatcher(opts)
        self.settlement = Settlement(
            self.broker,
            self.executor,
            self.policies,
            self.window,
            lambda: self.holding.parked,
            self.events,
            meter,
        )
        maker = supervised or (lambda *args: make_pool(self.pool_name, *args))
        self.pool: Pool = maker(settings, self.executor, self.settlement.settle)
        self.pool.set_task_events(self.events.task_events)
        self.consumer = Consumer(
            broker=self.broker,
            queues=self.queues,
            conf=conf,
            tasks=app.tasks,
            results=app.results,
            policies=self.policies,
            hostname=self.hostname,
            window=self.window,
            holding=self.holding,
            settlement=self.settlement,
            submit=self.pool.submit,
            timing=timing,
            clock=clock,
            # Built now, so unusable keys stop start-up rather than fail every message.
            sealer=app.security.sealer,
            events=self.events,
        )
        #: Answers remote control (None: turned off, or the broker cannot broadcast).
        self.remote: ControlServer | None = None
        if conf.worker_enable_remote_control and broadcasts(app.broker_url) and not supervised:
            sealer = app.security.sealer
            verifier = (
                CommandVerifier(sealer.keyring, accept_unsigned=sealer.accept_unsigned)
                if sealer is not None
                else None
            )
            self.remote = ControlServer(
                self._broadcast_connection,
                RemoteHandle(self),
                mailbox(conf),
                self.events.clock,
                verifier,
            )
        #: Serves ``metrics`` on ``_metrics_at`` (started by ``run``).
        self.metrics_server: MetricsServer | None = None
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._cold = False
        self._terminated: set[str] = set()
        # In a gevent or eventlet process the heartbeat is a greenlet that a task
        # which never yields would hold up: a thread of the OS keeps the lease.
        interval = timing.heartbeat_interval or conf.worker_lease_timeout / 3
        self._keeper = LeaseKeeper(self.broker, interval) if monkey.green() else None
        bind = getattr(self.pool, "bind", None)
        if bind is not None:  # a pool whose children consume builds their workers from this one
            bind(self)

    # -- lifecycle -------------------------------------------------------------------

    def run(self, burst: bool = False) -> None:
        """Consume until ``stop`` (or, with ``burst``, until the queues are empty).

        A broker that cannot be reached at start is waited for (see
        ``taskq.broker.startup``); a stop while waiting returns at once.

        Raises:
            BrokerError: the broker stayed unreachable (``broker_connection_*``).
            ConfigurationError: the metrics port cannot be served (in use, ...).
        """
        self.app.finalize()  # Celery's on_after_configure / on_after_finalize
        for line in [] if self.supervised else self.app.conf.unimplemented():
            log.warning(line)  # Celery settings taskq ignores (the parent says so)
        if (
            self.remote is not None
            and self.app.conf.security_keys
            and self.app.conf.security_accept_unsigned
        ):
            log.warning(
                "security_accept_unsigned is on, so remote control commands run unsigned: "
                "whoever can write to the broker can shut this worker down, change its "
                "limits or revoke tasks (docs/security.md)."
            )
        if self.metrics is not None:
            self._serve_metrics()  # a port in use stops start-up here
        # Declared as the app's queue table says, as its producers declare them.
        specs = [self.broker.queues[q] for q in self.queues]
        if not connect_on_startup(
            lambda: self.broker.declare(specs),
            url=self.app.broker_url,
            conf=self.app.conf,
            stop=self._stopping,
            who=self.hostname,
        ):
            self.broker.close()
            self._close_metrics()
            return
        self.pool.start()
        if self._keeper is not None:
            self._keeper.start()
        threads = [(self._heartbeat, "heartbeat")]
        if not self.supervised:  # the parent terminates what its children run
            threads.append((self._watch_revokes, "revokes"))
        for target, name in threads:
            threading.Thread(target=target, name=f"taskq-{name}", daemon=True).start()
        self.events.start()
        if self.remote is not None:
            self.remote.start()
        self.ready.set()
        if not self.supervised:
            log.info("%s ready.", self.hostname)
            signals.worker_ready.send(self)
        try:
            if getattr(self.pool, "consumes", False):
                self._supervise(burst)
            else:
                self.consumer.run(self._stopping, burst)
        finally:
            self._shutdown()

    def supervised_worker(self, pool: PoolMaker, shares: int) -> Worker:
        """A worker for a prefork child that consumes on its own (made in the child,
        after the fork): this worker's options, queues, node name, task events and
        policies (remote control's changes included, each rate limit split in
        ``shares``), one task at a time in ``pool``."""
        opts = dataclasses.replace(
            self.options,
            queues=list(self.consumer.queues),
            hostname=self.hostname,
            pool="solo",
            concurrency=1,
            autoscale=None,
            without_heartbeat=True,
            task_events=self.events.task_events,
        )
        meter = self.metrics.meter if self.metrics else None
        worker = Worker(self.app, opts, timing=self.timing, supervised=pool, meter=meter)
        worker.policies.inherit(self.policies, shares)
        return worker

    def _supervise(self, burst: bool) -> None:
        """The pool's children consume: apply remote control's queue changes (which
        the pool passes on to them) until stopped (with ``burst``, until the queues
        and the children are empty twice in a row, a fetch apart)."""
        empty = 0
        while not self._stopping.is_set():
            self.consumer.apply_changes()
            self.window.wait(self.timing.fetch_timeout if burst else 0.5)
            if burst:
                try:
                    empty = empty + 1 if self.pool.empty(self.consumer.queues) else 0  # type: ignore[attr-defined]
                except BrokerError as exc:
                    log.warning("Could not tell whether the queues are empty: %s", exc)
                if empty >= 2:
                    return

    def stop(self, cold: bool = False) -> None:
        """Ask the worker to stop: warm (finish running tasks) or cold (give them back)."""
        self._cold = self._cold or cold
        self._stopping.set()
        self.window.wake()

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

    def terminate(self, task_ids: Iterable[str], signum: int) -> list[str]:
        """Send ``signum`` to those of ``task_ids`` that run here (once each: a task
        already told is not told again). Returns the ids told."""
        wanted = set(task_ids) - self._terminated
        told = []
        for request in self.pool.running():
            if request.id in wanted:
                self._terminated.add(request.id)
                if self.pool.terminate(request.id, signum):
                    log.info("Terminating task %s with %s", request.id, signal.Signals(signum).name)
                    told.append(request.id)
        return told

    # -- monitoring ------------------------------------------------------------------

    def _event_dispatcher(self, opts: WorkerOptions) -> EventDispatcher:
        """Worker events always (unless ``without_heartbeat``), task events with
        ``-E`` / ``worker_send_task_events``; on a broker that cannot broadcast
        (SQLite) none, and the worker says so."""
        conf, url = self.app.conf, self.app.broker_url
        task_events = conf.worker_send_task_events if opts.task_events is None else opts.task_events
        can = broadcasts(url)
        if not can and (task_events or conf.worker_enable_remote_control):
            log.info(
                "Events and remote control are off: the broker %s cannot broadcast "
                "(docs/monitoring.md).",
                mask_url(url),
            )
        return EventDispatcher(
            self._broadcast_connection,
            self.hostname,
            task_events=task_events and can,
            load=None if opts.without_heartbeat or not can else self._load,
            heartbeat_interval=opts.heartbeat_interval or conf.worker_heartbeat_interval,
            exchange_name=conf.event_exchange,
            redact=(
                redacted_fields(conf.security_encrypt, conf.security_encrypt_results)
                if conf.security_keys
                else frozenset()
            ),
        )

    def _broadcast_connection(self) -> Any:
        """A kombu connection for events and remote control (see ``taskq.events``)."""
        conf = self.app.conf
        return connect(
            self.app.broker_url, connect_timeout=conf.broker_connection_timeout, what="Events"
        )

    def _metrics(self, opts: WorkerOptions) -> WorkerMetrics | None:
        """The worker's Prometheus metrics, when a port is given (else None)."""
        conf = self.app.conf
        port = opts.metrics_port if opts.metrics_port is not None else conf.worker_metrics_port
        if port is None:
            return None
        if not 0 <= port <= 65535:
            raise ConfigurationError(
                f"Metrics port {port} is out of range: give 1-65535 (or 0: any free port)."
            )
        require("--metrics-port (worker_metrics_port)")
        from taskq.metrics.worker import WorkerMetrics

        self._metrics_at = (opts.metrics_host or conf.worker_metrics_host, port)
        return WorkerMetrics(self.app.tasks, self._live)

    def _serve_metrics(self) -> None:
        from taskq.metrics.server import MetricsServer

        assert self.metrics is not None
        host, port = self._metrics_at
        try:
            self.metrics.open()
            self.metrics_server = MetricsServer(self.metrics.registry, host, port)
        except ConfigurationError:
            self.metrics.close()
            raise
        log.info("Metrics at %s", self.metrics_server.url)

    def _close_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.metrics is not None:
            self.metrics.close()

    def _live(self) -> Live:
        """What a scrape reports about the tasks this worker holds now."""
        from taskq.metrics.worker import Live

        return Live(
            hostname=self.hostname,
            pool=self.pool_name,
            concurrency=self.pool.concurrency,
            active=len(self.pool.running()),
            reserved=len(self.pool.waiting()) + self.holding.parked,
            scheduled=self.holding.held,
            prefetched=self.window.in_flight,
            started_at=self.started_at,
        )

    def _load(self) -> tuple[int, int]:
        """Tasks running now and tasks done so far (worker-heartbeat events)."""
        load = getattr(self.pool, "load", None)
        if load is not None:  # its children consume: their counts
            return cast(tuple[int, int], load())
        return self.window.in_flight, sum(self.settlement.totals().values())

    # -- background ------------------------------------------------------------------

    def _heartbeat(self) -> None:
        # Until every message is settled or given back, also during a warm shutdown.
        interval = self.timing.heartbeat_interval or self.app.conf.worker_lease_timeout / 3
        while not self._closed.wait(interval):
            try:
                self.broker.heartbeat()
            except BrokerError as exc:
                log.warning("Heartbeat failed: %s", exc)

    def _watch_revokes(self) -> None:
        """Terminate running tasks revoked with ``terminate=True`` (see ``taskq.control``)."""
        backend = self.app.results.backend
        while backend is not None and not self._closed.wait(self.timing.control_interval):
            ids = [r.id for r in self.pool.running() if r.id not in self._terminated]
            try:
                found = terminations(backend, ids)
            except BackendError as exc:
                log.warning("Could not check revoked ids: %s", exc)
                continue
            for task_id, signum in found.items():
                self.terminate([task_id], signum)

    # -- shutdown --------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._give_back(self.pool.take_unstarted() + self.holding.take_all(), "unstarted")
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
        self.settlement.close()  # held results written and their messages acked
        self._closed.set()
        if self._keeper is not None:
            self._keeper.stop()
        self.broker.close()
        if self.remote is not None:
            self.remote.stop()
        self.events.close()
        self._close_metrics()
        if not self.supervised:
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
