"""The prefork pool on Redis: children that fetch and settle on their own, the parent
supervising only.

Each child runs a worker of its own (``taskq.worker.pools.prefork.member``) with a
lease of its own, so no task passes through the parent: the parent's old per-task
work (decode, dispatch over a socket, settle; about 90 us of CPU a task, the
ceiling of the whole pool) is gone, and each child drains about as fast as a solo
worker. The parent keeps what needs a process that outlives its children:

* lifecycle: it starts the children, replaces one that dies, and with
  ``autoscale`` grows the pool while every child is busy and messages wait in the
  queues, and shrinks it after ``AUTOSCALE_KEEPALIVE`` idle seconds;
* dead children: it reads the child's ``Board`` (its lease and running task),
  settles the running task as the old pool did (``children.after_death``: hard
  time limit, terminate, or ``WORKER_LOST``, which redelivers it with its count:
  the poison guard) through the worker's ``Settlement`` on the child's lease, then
  gives back everything else the child held, uncounted (``RedisBroker.release``);
* hard time limits (it kills the child past its running task's deadline) and
  ``revoke(terminate=True)`` (it signals the child running the task);
* remote control and worker events: it answers for the worker, and passes changes
  on to every child (``forward``; replayed to children started later);
* shutdown: it tells each child to stop (warm: the running task finishes, what was
  fetched and not started goes back) and kills those still running when the
  worker gives up waiting; their leases are given back at once.

Leases: each child renews its own (its worker's heartbeat thread), so a child that
hangs without dying keeps its messages only as long as it lives; one that dies is
settled by the parent within a poll (``_TICK``), not after the lease runs out.

Other brokers (RabbitMQ, SQLite) keep the dispatching pool (``pool.PreforkPool``):
``consumes`` says which one a broker URL gets.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import billiard

from taskq.errors import BrokerError, DecodeError
from taskq.message import decode
from taskq.worker.pools.prefork import pool as dispatching
from taskq.worker.pools.prefork.board import Board, Running
from taskq.worker.pools.prefork.child import Wire
from taskq.worker.pools.prefork.children import TERMINATE, TIMEOUT, after_death
from taskq.worker.pools.prefork.member import member_main
from taskq.worker.pools.prefork.sizing import Sizing
from taskq.worker.request import Request

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.broker.redis import RedisBroker
    from taskq.worker.executor import Executor
    from taskq.worker.pools.base import Done, PoolSettings
    from taskq.worker.worker import Worker

__all__ = ["ConsumingPool", "consumes"]

log = logging.getLogger("taskq.worker")

#: Broker URL schemes whose prefork children consume on their own.
SCHEMES = frozenset({"redis", "rediss"})
#: Seconds between the supervisor's looks at its children's boards (hard time limits).
_TICK = 0.05
#: A child that dies sooner than this after its start delays the next one as long.
_CRASH_LOOP = 1.0
#: Killed by the parent at shutdown: what it held goes back uncounted.
_SHUTDOWN = "shutdown"


def consumes(app: App) -> bool:
    """Whether a prefork pool for ``app`` has children that consume on their own."""
    return urlsplit(app.broker_url).scheme in SCHEMES


class _Member:
    """One child process as the supervisor sees it."""

    def __init__(self, process: Any, wire: Wire, board: Board) -> None:
        self.process = process
        self.wire = wire
        self.board = board
        self.killed: str | None = None  # TIMEOUT, TERMINATE, _SHUTDOWN
        self.target = ""  # the tag of the task it was killed for
        self.signum = 0
        self.retiring = False  # told to stop: not replaced
        self.shown: tuple[str, Request] | None = None  # the running request, decoded
        self.born = time.monotonic()

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def exit_status(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def kill_for(self, tag: str, why: str, signum: int) -> None:
        self.killed, self.target, self.signum = why, tag, signum
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


class ConsumingPool(Sizing):
    """N children consuming on their own; see the module docstring."""

    consumes = True

    def __init__(self, executor: Executor, done: Done, settings: PoolSettings) -> None:
        self._executor = executor
        self._done = done
        self._init_sizing(settings)
        self._worker: Worker | None = None
        self._members: list[_Member] = []
        self._calls: list[tuple[str, tuple[Any, ...]]] = []  # replayed to new children
        self._stopping = False  # the supervisor thread ends
        self._draining = False  # children were told to stop: none is replaced
        self._finished = 0  # tasks run by children that are gone
        self._names = itertools.count(1)
        self._busy_at = time.monotonic()
        self._scaled_at = 0.0
        self._spawn_after = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._loop, name="taskq-prefork", daemon=True)

    def bind(self, worker: Worker) -> None:
        """The worker whose settings, queues and policies the children take."""
        self._worker = worker

    @property
    def _broker(self) -> RedisBroker:
        assert self._worker is not None
        return self._worker.broker  # type: ignore[return-value]

    # -- the worker's side -------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            for _ in range(self._size):
                self._spawn()
        self._thread.start()

    def submit(self, request: Request) -> None:
        # The worker's own consumer does not fetch while its pool consumes.
        log.error("%r reached the parent of a consuming pool; giving it back", request)
        request.requeue()

    def take_unstarted(self) -> list[Request]:
        """Shutdown: tell every child to stop. Each gives back what it fetched and has
        not started; nothing unstarted waits in the parent."""
        with self._cond:
            self._draining = True
            for member in self._members:
                self._tell(member, ("stop", False))
        return []

    def running(self) -> list[Request]:
        """The request each child runs now (decoded from its board, for inspection:
        settling one of these does nothing, the child settles it)."""
        with self._cond:  # a board is closed once its child is buried
            shown = [(member, member.board.read()[3]) for member in self._members]
        running = []
        for member, now in shown:
            request = self._shown(member, now)
            if request is not None:
                running.append(request)
        return running

    def waiting(self) -> list[Request]:
        return []

    def join(self, timeout: float) -> bool:
        """Wait until every child has exited (after ``take_unstarted``)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._members, timeout)

    def terminate(self, task_id: str, signum: int) -> bool:
        """Signal the child running ``task_id``; False if none runs it now."""
        with self._cond:
            for member in self._members:
                running = member.board.read()[3]
                if running is not None and running.task_id == task_id and not member.killed:
                    member.kill_for(running.tag, TERMINATE, signum)
                    return True
        return False

    def set_task_events(self, enabled: bool) -> None:
        self.forward("set_task_events", (enabled,))

    def forward(self, method: str, args: tuple[Any, ...]) -> None:
        """Apply a remote control change (a ``RemoteHandle`` method) in every child,
        and in those started later."""
        with self._cond:
            self._calls.append((method, args))
            for member in self._members:
                self._tell(member, ("call", method, args))

    def empty(self, queues: list[str]) -> bool:
        """Whether nothing waits in ``queues`` and no child holds or runs anything
        (``Worker.run(burst=True)``).

        Raises:
            BrokerError: Redis could not be reached.
        """
        with self._cond:
            boards = [m.board.read() for m in self._members]
        if any(running is not None for _, _, _, running in boards):
            return False
        leases = [lease for lease, _, _, _ in boards if lease]
        return not self._broker.holding(leases) and not self._broker.backlog(queues)

    def pids(self) -> list[int]:
        with self._cond:
            return [m.pid for m in self._members if m.process.is_alive()]

    def load(self) -> tuple[int, int]:
        """Tasks running now and tasks run so far, over all children (worker events)."""
        with self._cond:
            finished, running = self._finished, 0
            for member in self._members:
                _, _, tasks, now = member.board.read()
                finished += tasks
                running += now is not None
        return running, finished

    def stop(self) -> None:
        """Stop the supervisor, kill the children still alive (the worker stopped
        waiting for them) and give back all they held, uncounted."""
        with self._cond:
            self._stopping = True
            self._wake_supervisor()
        if self._thread.is_alive():
            self._thread.join()
        for member in list(self._members):
            if member.process.is_alive():
                member.kill_for("", _SHUTDOWN, signal.SIGKILL)
        for member in list(self._members):
            member.process.join(2.0)
            self._bury(member)
        with self._cond:
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
        os.close(wake_r)
        os.close(wake_w)

    # -- the supervisor thread ---------------------------------------------------------

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        watched: dict[int, _Member] = {}
        while True:
            with self._cond:
                if self._stopping:
                    return
                for member in self._members:
                    if member.process.sentinel not in watched:
                        watched[member.process.sentinel] = member
                        poller.register(member.process.sentinel, select.POLLIN)
            try:
                ready = poller.poll(_TICK * 1000)
            except InterruptedError:
                continue
            dead = []
            for fd, _ in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif fd in watched:
                    poller.unregister(fd)
                    dead.append(watched.pop(fd))
            with self._cond:
                if self._stopping:
                    return
            for member in dead:
                member.process.join(1.0)
                self._bury(member)
            try:
                self._supervise()
            except Exception:
                log.exception("Prefork supervisor error; going on")

    def _supervise(self) -> None:
        now = time.monotonic()
        busy, idle = 0, []
        with self._cond:
            for member in self._members:
                running = member.board.read()[3]
                if running is None:
                    if not member.retiring:
                        idle.append(member)
                    continue
                busy += 1
                if running.deadline and now >= running.deadline and not member.killed:
                    log.error(
                        "Task %s[%s]: hard time limit exceeded; killing child %d",
                        running.name,
                        running.task_id,
                        member.pid,
                    )
                    member.kill_for(running.tag, TIMEOUT, signal.SIGKILL)
            if busy:
                self._busy_at = now
            if not self._draining:
                self._replace(now)
        if self._min != self._max and not self._draining and now - self._scaled_at >= 0.2:
            self._scaled_at = now
            self._autoscale(now, idle)

    def _replace(self, now: float) -> None:
        live = sum(1 for m in self._members if not m.retiring)
        if live < self._size and now >= self._spawn_after:
            for _ in range(self._size - live):
                self._spawn()

    def _autoscale(self, now: float, idle: list[_Member]) -> None:
        if not idle and self._size < self._max:
            assert self._worker is not None
            try:
                waiting = self._broker.backlog(self._worker.consumer.queues)
            except BrokerError as exc:
                log.warning("Autoscale could not count waiting messages: %s", exc)
                return
            if waiting:
                with self._cond:
                    grow = min(waiting, self._max - self._size)
                    log.info("Autoscale: %d -> %d children", self._size, self._size + grow)
                    self._size += grow
                    self._replace(now)
        elif (
            idle
            and self._size > self._min
            and now - self._busy_at >= dispatching.AUTOSCALE_KEEPALIVE
        ):
            with self._cond:
                log.info("Autoscale: %d -> %d children", self._size, self._size - 1)
                self._size -= 1
                self._retire(idle[-1])
                self._busy_at = now

    def _retire_beyond(self, size: int) -> None:
        """Tell the children past ``size`` to stop, idle ones first (lock held)."""
        live = [m for m in self._members if not m.retiring]
        live.sort(key=lambda m: m.board.read()[3] is not None)
        for member in live[: max(0, len(live) - size)]:
            self._retire(member)

    def _retire(self, member: _Member) -> None:
        member.retiring = True
        self._tell(member, ("stop", False))

    def _spawn(self) -> None:
        """Start a child (lock held)."""
        assert self._worker is not None
        parent_end, child_end = socket.socketpair()
        board = Board()
        inherited = [*(m.wire for m in self._members), parent_end, self._wake_r, self._wake_w]
        name = f"ForkPoolWorker-{next(self._names)}"
        process = billiard.get_context("fork").Process(
            target=member_main,
            args=(self._worker, board, child_end, name, inherited, self._max),
            name=name,
            daemon=True,
        )
        try:
            process.start()
        except OSError as exc:
            parent_end.close()
            board.close()
            log.error("Could not start a child process: %s; retrying in 1s", exc)
            self._spawn_after = time.monotonic() + 1.0
            return
        finally:
            child_end.close()
        member = _Member(process, Wire(parent_end), board)
        self._members.append(member)
        for method, args in self._calls:
            self._tell(member, ("call", method, args))
        if self._draining:
            self._retire(member)
        self._wake_supervisor()

    def _tell(self, member: _Member, message: Any) -> None:
        """Send ``message`` to a child (lock held); a dead one's sentinel reports it."""
        with contextlib.suppress(OSError):
            member.wire.send(message)

    def _wake_supervisor(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"!")

    # -- a child that ended ------------------------------------------------------------

    def _bury(self, member: _Member) -> None:
        """Settle what a child that exited held: its running task as ``after_death``
        says, the rest given back uncounted; then forget it (its replacement comes
        with the next ``_supervise``)."""
        lease, _, tasks, running = member.board.read()
        if member.killed is None and not (member.retiring or self._draining):
            if member.process.exitcode == 0:  # recycled itself (max tasks or memory)
                log.info("Child %d exited; starting another", member.pid)
            else:
                log.warning("Child %d %s", member.pid, member.exit_status())
            if time.monotonic() - member.born < _CRASH_LOOP:
                # It died as it started (broken code at import, say): do not fork
                # a new child every tick.
                self._spawn_after = time.monotonic() + _CRASH_LOOP
        killed_for_it = member.killed in (TIMEOUT, TERMINATE)
        if running is not None and killed_for_it and member.target != running.tag:
            # Killed as the task it was killed for ended and the next one started.
            log.info(
                "Child %d was stopped as %s started; running it again", member.pid, running.task_id
            )
            running = None
        if member.killed == _SHUTDOWN:
            running = None  # given back like the rest
        if lease:
            self._settle_lease(member, lease, running)
        with self._cond:
            self._members.remove(member)
            self._finished += tasks
            member.wire.close()
            member.board.close()
            self._cond.notify_all()

    def _settle_lease(self, member: _Member, lease: str, running: Running | None) -> None:
        adopted = self._broker.adopt(lease)
        try:
            if running is not None:
                request = self._request(adopted, running)
                if request is not None:
                    lost = f"worker process {member.pid} {member.exit_status()}"
                    outcome = after_death(
                        self._executor, request, member.killed, member.signum, lost
                    )
                    self._done(request, outcome)
            back = adopted.release()
            if back:
                log.info("Returned %d message(s) child %d held", back, member.pid)
        except BrokerError as exc:
            log.error(
                "Could not settle what child %d held: %s (its lease returns it)", member.pid, exc
            )
        finally:
            adopted.close()

    def _request(self, broker: RedisBroker, running: Running) -> Request | None:
        """The request ``running`` describes, settled through ``broker``."""
        if running.payload is not None:
            delivery = broker.delivery_of(running.tag, running.source, running.payload)
        else:
            found = [d for d in broker.leased() if d.tag == running.tag]
            if not found:
                log.error("Task %s[%s] was lost with its child", running.name, running.task_id)
                return None
            delivery = found[0]
        request = self._decoded(broker, delivery)
        if request is not None and not running.acks_late:
            request.acks_late = False
            request.started()  # it was acked as it started: settle it here too
        return request

    def _decoded(self, broker: RedisBroker, delivery: Any) -> Request | None:
        worker = self._worker
        assert worker is not None
        envelope = delivery.envelope
        try:
            sealer = worker.app.security.sealer
            if sealer is not None:
                envelope = sealer.open(envelope)
            message = decode(envelope, worker.app.conf.accept_content)
        except DecodeError as exc:
            log.error("Could not read a message a child held: %s", exc)
            return None
        request = Request(delivery, message, broker, worker.hostname, envelope.headers)
        policy = worker.policies[message.task]
        request.acks_late = policy.acks_late
        request.soft_time_limit, request.time_limit = policy.limits_for(message)
        return request

    def _shown(self, member: _Member, running: Running | None) -> Request | None:
        """The request ``member`` runs now, for inspection (decoded once per task)."""
        if running is None or running.payload is None:
            return None
        if member.shown is not None and member.shown[0] == running.tag:
            return member.shown[1]
        delivery = self._broker.delivery_of(running.tag, running.source, running.payload)
        request = self._decoded(self._broker, delivery)
        if request is None:
            return None
        request.time_start = running.started
        request.worker_pid = member.pid
        member.shown = (running.tag, request)
        return request
