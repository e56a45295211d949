"""The body of a consuming prefork child: a worker of its own, supervised by the parent.

On Redis each child fetches, decodes, runs and settles its tasks itself with the
parts every worker has (``Consumer``, ``Window``, ``Settlement``, ``Executor``),
under a lease of its own; the parent (``taskq.worker.pools.prefork.consuming``)
never touches a task on the way, so adding a child adds a core's worth of
throughput. The child's worker is ``supervised``: no remote control, no worker
events and no revoke watch (the parent does those), and its pool is ``ChildPool``,
which runs each request in the child's main thread and shows it on the child's
``Board`` first, so the parent can enforce hard time limits, terminate it, and
settle it if the child dies.

Parent to child, on the socket pair (``child.Wire``):

* ``("call", method, args)``: a remote control change, replayed on the child's own
  ``RemoteHandle`` (revoke, rate and time limits, task events, queues);
* ``("stop", cold)``: shut down (warm: finish the running task; what was fetched
  and not started goes back);
* the parent's end closing: the parent is gone, stop warm.

The child writes nothing back: the board is all the parent reads.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskq import signals
from taskq.worker.executor import Action, Executor, Outcome, internal_error
from taskq.worker.pools.base import Done, PoolSettings, cannot_terminate
from taskq.worker.pools.prefork.board import Board
from taskq.worker.pools.prefork.child import Wire, close_quietly, rss_kib, run_one, soft_limit_now

if TYPE_CHECKING:
    from taskq.broker.redis import RedisBroker
    from taskq.worker.request import Request
    from taskq.worker.worker import Worker

log = logging.getLogger("taskq.worker")


class ChildPool:
    """Runs each request inline in the child's consumer thread (the main thread, so
    soft time limits are signals), shown on the board while it runs. After
    ``max_tasks`` tasks or past ``max_memory`` KiB the child stops its worker (warm)
    and exits; the parent starts another."""

    concurrency = 1

    def __init__(
        self,
        executor: Executor,
        done: Done,
        board: Board,
        max_tasks: int | None,
        max_memory: int | None,
    ) -> None:
        self._executor = executor
        self._done = done
        self._board = board
        self._max_tasks = max_tasks
        self._max_memory = max_memory
        self._tasks = 0
        self._current: Request | None = None
        self._unstarted: list[Request] = []
        self.worker: Worker | None = None  # set once the child's worker is made
        self.stopping = False

    def describe(self) -> str:
        return "1 (prefork child)"

    def start(self) -> None:
        pass

    def submit(self, request: Request) -> None:
        if self.stopping:  # fetched with the running one's batch: give it back
            self._unstarted.append(request)
            return
        assert self.worker is not None
        broker: RedisBroker = self.worker.broker  # type: ignore[assignment]
        try:
            if not request.may_run():
                self._done(request, Outcome(Action.GONE))
                return
            source, payload = broker.raw_of(request.delivery)
            hard = request.time_limit
            deadline = time.monotonic() + hard if hard else 0.0
            self._board.begin(
                request.delivery.tag,
                request.id,
                request.name,
                deadline,
                request.acks_late,
                source,
                payload,
            )
            self._current = request
            request.worker_pid = os.getpid()
            request.started()
            outcome = run_one(self._executor, request.context())
        except Exception as exc:
            outcome = internal_error(request, exc)
        try:
            self._done(request, outcome)
        finally:
            self._current = None
            self._tasks += 1
            self._board.end(self.worker.window.in_flight)
            self._recycle()

    def _recycle(self) -> None:
        why = ""
        if self._max_tasks and self._tasks >= self._max_tasks:
            why = f"ran {self._tasks} tasks (max_tasks_per_child)"
        elif self._max_memory and (rss := rss_kib()) > self._max_memory:
            why = f"uses {rss} KiB (max_memory_per_child {self._max_memory} KiB)"
        if why and not self.stopping:
            log.info("Child %d %s: replacing it", os.getpid(), why)
            self.stopping = True
            assert self.worker is not None
            self.worker.stop()

    def take_unstarted(self) -> list[Request]:
        taken, self._unstarted = self._unstarted, []
        return taken

    def running(self) -> list[Request]:
        return [self._current] if self._current else []

    def waiting(self) -> list[Request]:
        return list(self._unstarted)

    def resize(self, delta: int) -> int:
        raise ValueError("A prefork child runs one task at a time")

    def set_task_events(self, enabled: bool) -> None:
        pass  # the child's own settlement sends them

    def join(self, timeout: float) -> bool:
        return self._current is None

    def terminate(self, task_id: str, signum: int) -> bool:
        return cannot_terminate("prefork child", task_id, self.running())  # the parent does

    def stop(self) -> None:
        pass


def member_main(
    parent: Worker,
    board: Board,
    sock: socket.socket,
    name: str,
    inherited: Iterable[Any],
    shares: int,
) -> None:
    """Run a supervised worker in this (forked) child until told to stop.

    Args:
        parent: the parent's worker, as inherited by fork: its options, queues,
            policies and settings are this child's.
        board: where this child shows its lease and running task.
        sock: this child's end of its socket pair with the parent.
        name: the process name shown in logs.
        inherited: descriptors of the parent and of other children to close here.
        shares: how many children split each rate limit.
    """
    # What came with the fork stays for the child's life: out of the collector's
    # way, every collection would walk (and copy, page by page) the parent's heap.
    gc.freeze()
    for item in inherited:
        close_quietly(item)
    multiprocessing.current_process().name = name
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what they mean
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # revoke(terminate=True) ends the child
    signal.signal(signal.SIGUSR1, soft_limit_now)
    parent.executor.reset_connections()
    signals.worker_process_init.send(None, pid=os.getpid())
    worker = _worker(parent, board, shares)
    board.set_lease(worker.broker.lease_id)  # type: ignore[attr-defined]
    wire = Wire(sock)
    threading.Thread(target=_listen, args=(wire, worker), name="taskq-parent", daemon=True).start()
    worker.run()


def _worker(parent: Worker, board: Board, shares: int) -> Worker:
    pools: list[ChildPool] = []

    def make(settings: PoolSettings, executor: Executor, done: Done) -> ChildPool:
        max_tasks, max_memory = settings.max_tasks_per_child, settings.max_memory_per_child
        pools.append(ChildPool(executor, done, board, max_tasks, max_memory))
        return pools[0]

    worker = parent.supervised_worker(make, shares)
    pools[0].worker = worker
    return worker


def _listen(wire: Wire, worker: Worker) -> None:
    """Apply what the parent sends; stop when it says so or goes away."""
    from taskq.worker.remote import RemoteHandle

    handle = RemoteHandle(worker)
    pool: ChildPool = worker.pool  # type: ignore[assignment]
    try:
        while True:
            for message in wire.receive(block=True):
                kind = message[0]
                if kind == "stop":
                    pool.stopping = True
                    worker.stop(cold=message[1])
                elif kind == "call":
                    _, method, args = message
                    try:
                        getattr(handle, method)(*args)
                    except Exception:
                        log.exception("Could not apply %s%r from the parent", method, args)
    except (EOFError, OSError):
        pool.stopping = True
        worker.stop()
