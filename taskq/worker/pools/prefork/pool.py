"""The dispatching prefork pool (RabbitMQ, SQLite): task code runs in child
processes (billiard), one task at a time each. On Redis the children consume on
their own instead (``taskq.worker.pools.prefork.consuming``).

The parent process consumes, dispatches and settles; it never runs task code. It
keeps the requests it was handed in its own FIFO and gives one to each idle child.
A busy child is given more to queue only behind work known to be quick (the rule
and the expected run times it rests on are in ``taskq.worker.pools.prefork.queue``).

One dispatcher thread owns the children: it waits on their sockets and process
sentinels, reports each outcome to the worker, replaces children that die (the
task that was running gets ``WORKER_LOST``; the ones queued behind it never
started and are dispatched again, uncounted), retires children after
``max_tasks_per_child`` tasks or past ``max_memory_per_child`` KiB, kills a child
whose task passed its hard time limit (the task is recorded as failed with
``TimeLimitExceeded`` and acked), and with ``autoscale`` grows the pool while
requests wait and shrinks it after ``AUTOSCALE_KEEPALIVE`` idle seconds. What the
parent keeps per child, and what a child's death means for its task, are in
``taskq.worker.pools.prefork.children``; the messages on a child's socket are described
in ``taskq.worker.pools.prefork.child``.

billiard's own ``Pool`` is not used: it queues tasks into a shared pipe (so the
parent cannot take unstarted ones back at shutdown) and runs four threads of its
own; a dispatcher over ``Process`` and a socket pair per child does exactly this.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import operator
import os
import pickle
import select
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from taskq.worker.executor import Action, Executor, Outcome, Summary, internal_error
from taskq.worker.pools.base import QueuedPool
from taskq.worker.pools.prefork.child import BACK, CONTEXT_FIELDS, PROTOCOL, Done, Events
from taskq.worker.pools.prefork.children import (
    TERMINATE,
    Child,
    after_death,
    enforce_deadlines,
    start_child,
)
from taskq.worker.pools.prefork.queue import RunTimes, held, may_queue, queueable
from taskq.worker.pools.prefork.sizing import Sizing

if TYPE_CHECKING:
    from taskq.worker.pools.base import Done as Finish
    from taskq.worker.pools.base import PoolSettings
    from taskq.worker.request import Request

log = logging.getLogger("taskq.worker")

#: Seconds a pool above its autoscale minimum stays idle before it retires a child.
AUTOSCALE_KEEPALIVE = 30.0
_ACKED = Outcome(Action.ACK)
_fields = operator.attrgetter(*CONTEXT_FIELDS)

#: What the dispatcher reports outside its lock: an outcome, or the child that died.
_Finished = list[tuple["Request", "Child | Outcome"]]


class PreforkPool(Sizing, QueuedPool):
    """N child processes fed from the parent's FIFO; see the module docstring."""

    def __init__(self, executor: Executor, done: Finish, settings: PoolSettings) -> None:
        self._executor = executor
        self._done = done
        self._max_tasks = settings.max_tasks_per_child
        self._max_memory = settings.max_memory_per_child
        self._init_sizing(settings)
        self._task_events = False  # children report summaries for task events
        self._children: list[Child] = []
        self._waiting: collections.deque[Request] = collections.deque()
        self._stopping = False
        self._handing_back = False  # shutdown: what comes back goes to the worker
        self._times = RunTimes(executor.tasks)
        self._seq = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._woken = False  # a byte waits in the wake pipe
        self._polling = False  # the dispatcher is past its last look at ``_waiting``
        self._arrived = False  # submitted since that look, before it polls
        self._back_due = False  # the worker took the unstarted back: children must too
        self._outbox: list[tuple[Child, bytes, list[int]]] = []  # sent outside the lock
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._fds: dict[int, tuple[Child, bool]] = {}  # fd -> (child, is its sentinel)
        self._names = itertools.count(1)
        self._busy_at = time.monotonic()
        self._spawn_after = 0.0
        self._thread = threading.Thread(target=self._loop, name="taskq-prefork", daemon=True)

    # -- the worker's side -------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            for _ in range(self._size):
                self._spawn()
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._cond:
            self._waiting.append(request)
            if self._polling:
                self._wake_supervisor()
            else:
                self._arrived = True  # it looks again before it polls

    def take_unstarted(self) -> list[Request]:
        """The requests not handed to a child. Children give back the ones queued
        behind their running task; those are reported as ``REQUEUE``."""
        with self._cond:
            self._handing_back = self._back_due = True
            taken = list(self._waiting)
            self._waiting.clear()
            self._wake_supervisor()
            return taken

    def running(self) -> list[Request]:
        """Every request handed to a child and not reported yet (queued ones too)."""
        with self._cond:
            return [r for c in self._children for _, r, _ in c.sent]

    def join(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._waiting and not any(c.sent for c in self._children),
                timeout,
            )

    def terminate(self, task_id: str, signum: int) -> bool:
        """Send ``signum`` to the child running ``task_id`` (once it starts, if it is
        queued in a child); False if no child holds it."""
        with self._cond:
            for child in self._children:
                for position, (_, request, _) in enumerate(child.sent):
                    if request.id != task_id:
                        continue
                    if position == 0:
                        child.kill_for(request, TERMINATE, signum)
                    else:
                        child.terminate[task_id] = signum
                    return True
        return False

    def set_task_events(self, enabled: bool) -> None:
        """Tell the children (and those started later) whether to report summaries."""
        with self._cond:
            self._task_events = enabled
            for child in self._children:
                self._post(child, Events(enabled))
            self._wake_supervisor()

    def _retire_beyond(self, size: int) -> None:
        """Retire children past ``size``, idle ones first (with the lock held)."""
        live = [c for c in self._children if not c.retiring]
        for child in sorted(live, key=lambda c: len(c.sent))[: max(0, len(live) - size)]:
            self._retire(child)
            if not child.sent:
                child.told_to_exit = True
                self._post(child, None)

    def pids(self) -> list[int]:
        """The pids of the live children."""
        with self._cond:
            return [c.pid for c in self._children if c.process.is_alive()]

    def stop(self) -> None:
        """Stop the children: idle ones exit, busy ones are killed (the worker gave
        their requests back or finished them already). No outcome is reported after."""
        with self._cond:
            self._stopping = True
            self._wake_supervisor()
        if self._thread.is_alive():
            self._thread.join()
        for child in self._children:
            if child.sent:
                child.kill(signal.SIGKILL)
            else:
                child.send(None)
        deadline = time.monotonic() + 2.0
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.kill(signal.SIGKILL)
                child.process.join(1.0)
            child.wire.close()
        self._children.clear()
        with self._cond:
            # A closed descriptor's number may be reused: never write to it again.
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
        os.close(wake_r)
        os.close(wake_w)

    # -- the dispatcher thread ---------------------------------------------------------

    def _loop(self) -> None:
        """Read, then decide under the lock, then send and report outside it: the
        consumer thread takes the lock to submit, so it is held only for bookkeeping."""
        events: list[tuple[int, int]] = []
        while True:
            inbox, dead = self._receive(events)
            finished: _Finished = []
            with self._cond:
                if self._stopping:
                    return
                self._polling = self._arrived = False
                if self._woken:
                    os.read(self._wake_r, 64)
                    self._woken = False
                self._handle(inbox, dead, finished)
                enforce_deadlines(self._children)
                self._replace()
                self._autoscale()
                self._dispatch(finished)
                timeout = self._next_deadline()
                self._cond.notify_all()
            self._flush(finished)
            for request, result in finished:
                self._report(request, result)
            with self._cond:
                if self._arrived:
                    timeout = 0.0
                self._polling = True
            events = self._poller.poll(None if timeout is None else timeout * 1000.0)

    def _receive(
        self, events: list[tuple[int, int]]
    ) -> tuple[list[tuple[Child, list[Any]]], list[Child]]:
        """What the children sent, and which died (without the lock: the sockets and
        the poller are the dispatcher's alone)."""
        readable: list[Child] = []
        dead: list[Child] = []
        for fd, _ in events:
            entry = self._fds.get(fd)
            if entry is not None:
                child, sentinel = entry
                (dead if sentinel else readable).append(child)
        inbox = []
        for child in readable + [c for c in dead if c not in readable]:
            try:
                inbox.append((child, child.wire.receive(block=False)))
            except (EOFError, OSError):
                # It died (mid-message, maybe): its sentinel reports it. Stop polling
                # a socket that stays readable at its end.
                fd = child.wire.fileno()
                if fd in self._fds:
                    self._poller.unregister(fd)
                    del self._fds[fd]
        return inbox, dead

    def _handle(
        self, inbox: list[tuple[Child, list[Any]]], dead: list[Child], finished: _Finished
    ) -> None:
        now = time.monotonic()
        for child, messages in inbox:
            for message in messages:
                if isinstance(message, Done):
                    self._done_one(child, message, finished, now)
                else:
                    self._take_back(child, set(message.seqs), finished)
            if child.retiring and not child.sent and not child.told_to_exit:
                child.told_to_exit = True
                self._post(child, None)
        for child in dead:
            self._reap(child, finished)
        if self._back_due:
            self._back_due = False
            for child in self._children:
                if len(child.sent) > 1:
                    self._post(child, BACK)

    def _post(self, child: Child, message: Any, seqs: list[int] | None = None) -> None:
        """Send ``message`` once the lock is released (in order, by this thread)."""
        data = message if isinstance(message, bytes) else pickle.dumps(message, PROTOCOL)
        self._outbox.append((child, data, seqs or []))

    def _flush(self, finished: _Finished) -> None:
        failed = []
        for child, data, seqs in self._outbox:
            try:
                child.wire.send_pickled(data)
            except OSError:
                if seqs:
                    failed.append((child, seqs))
        self._outbox.clear()
        if failed:
            with self._cond:
                for child, seqs in failed:
                    # It died before reading them: they never started (its sentinel
                    # reports the death and whatever it held before).
                    if child in self._children:
                        self._take_back(child, set(seqs), finished)

    def _dispatch(self, finished: _Finished) -> None:
        """Give each idle child the next request, then queue more behind short tasks."""
        waiting = self._waiting
        if not waiting:
            return
        now = time.monotonic()
        batches: dict[Child, list[tuple[int, tuple[Any, ...]]]] = {}
        for child in self._children:
            if not waiting:
                break
            if not child.sent and not child.retiring:
                self._hand(child, waiting.popleft(), batches, now, finished)
        if waiting and not self._handing_back:
            max_tasks = self._max_tasks
            open_ = sorted((c for c in self._children if may_queue(c, now, max_tasks)), key=held)
            while open_:
                for child in tuple(open_):  # a round: one more each, least loaded first
                    if not waiting or not queueable(waiting[0]):
                        open_.clear()
                        break
                    self._hand(child, waiting.popleft(), batches, now, finished)
                    if not may_queue(child, now, max_tasks):
                        open_.remove(child)
        for child, batch in batches.items():
            self._send_batch(child, batch, finished)

    def _hand(
        self,
        child: Child,
        request: Request,
        batches: dict[Child, list[tuple[int, tuple[Any, ...]]]],
        now: float,
        finished: _Finished,
    ) -> None:
        try:
            if not request.may_run():
                finished.append((request, Outcome(Action.GONE)))
                return
        except Exception as exc:
            finished.append((request, internal_error(request, exc)))
            return
        try:
            request.started()
        except Exception:
            log.exception("Could not ack %r before running it; running it anyway", request)
        request.worker_pid = child.pid
        seq = next(self._seq)
        expected = self._times.expected.get(request.name, self._times.unknown)
        child.sent.append((seq, request, expected))
        if len(child.sent) == 1:
            child.now_first(now)
        batches.setdefault(child, []).append((seq, _fields(request.context())))
        self._busy_at = now

    def _send_batch(
        self, child: Child, batch: list[tuple[int, tuple[Any, ...]]], finished: _Finished
    ) -> None:
        try:
            data = pickle.dumps(batch, PROTOCOL)
        except Exception:
            batch = self._drop_unpicklable(child, batch, finished)
            if not batch:
                return
            data = pickle.dumps(batch, PROTOCOL)
        self._post(child, data, [seq for seq, _ in batch])

    def _drop_unpicklable(
        self, child: Child, batch: list[tuple[int, tuple[Any, ...]]], finished: _Finished
    ) -> list[tuple[int, tuple[Any, ...]]]:
        kept = []
        for item in batch:
            try:
                pickle.dumps(item, PROTOCOL)
            except Exception as exc:
                request = child.remove({item[0]})[0]
                reason = f"could not be sent to a child process: {exc!r}"
                finished.append((request, Outcome(Action.DEAD_LETTER, reason)))
            else:
                kept.append(item)
        return kept

    def _done_one(self, child: Child, message: Done, finished: _Finished, now: float) -> None:
        seq, action, reason, runtime, rss, summary = message
        if not child.sent or child.sent[0][0] != seq:
            log.error("Child %d reported a task it was not given (%s); ignored", child.pid, seq)
            return
        request = child.sent.popleft()[1]
        if summary is None and action is Action.ACK and not reason:
            finished.append((request, _ACKED))
        else:
            brief = Summary(*summary) if summary is not None else None
            finished.append((request, Outcome(action, reason, summary=brief)))
        child.tasks += 1
        self._times.learn(request.name, runtime)
        if child.killed:
            # Signalled as it finished: give back what waits, replace it.
            self._retire(child)
        elif self._max_tasks and child.tasks >= self._max_tasks:
            log.info(
                "Child %d ran %d tasks (max_tasks_per_child): replacing it", child.pid, child.tasks
            )
            self._retire(child)
        elif self._max_memory and rss > self._max_memory:
            log.info(
                "Child %d uses %d KiB (max_memory_per_child %d KiB): replacing it",
                child.pid,
                rss,
                self._max_memory,
            )
            child.retiring = True  # it gives back what it holds by itself
        if child.sent:
            child.now_first(now)

    def _retire(self, child: Child) -> None:
        child.retiring = True
        if child.sent:  # queued behind the one that just ended: acks-late (``_dispatch``)
            self._post(child, BACK)

    def _take_back(self, child: Child, seqs: set[int], finished: _Finished) -> None:
        """``child`` will not run these: dispatch them again, first in line (during a
        shutdown, hand them to the worker to give back)."""
        requests = child.remove(seqs)
        if self._handing_back:
            finished.extend((r, Outcome(Action.REQUEUE)) for r in requests)
        else:
            self._waiting.extendleft(reversed(requests))

    def _reap(self, child: Child, finished: _Finished) -> None:
        child.process.join(0.1)
        self._children.remove(child)
        for fd in [fd for fd, (c, _) in self._fds.items() if c is child]:
            self._poller.unregister(fd)
            del self._fds[fd]
        child.wire.close()
        if not child.sent:
            if not child.retiring:
                log.warning("Child %d exited (%s) while idle", child.pid, child.exit_status())
            return
        first = child.sent[0][1]
        if child.killed and child.target is not first:
            # Killed for a task that finished just before; this one had just started.
            log.info("Child %d was stopped as %r started; running it again", child.pid, first)
        else:
            finished.append((first, child))
            child.sent.popleft()
        self._take_back(child, {seq for seq, _, _ in child.sent}, finished)

    def _replace(self) -> None:
        missing = self._size - len(self._children)
        if missing > 0 and time.monotonic() >= self._spawn_after:
            for _ in range(missing):
                self._spawn()

    def _autoscale(self) -> None:
        if self._min == self._max:
            return
        now = time.monotonic()
        idle = [c for c in self._children if not c.sent and not c.retiring]
        if self._waiting and not idle and self._size < self._max:
            grow = min(len(self._waiting), self._max - self._size)
            log.info("Autoscale: %d -> %d children", self._size, self._size + grow)
            self._size += grow
            self._replace()
        elif (
            not self._waiting
            and idle
            and self._size > self._min
            and now - self._busy_at >= AUTOSCALE_KEEPALIVE
        ):
            log.info("Autoscale: %d -> %d children", self._size, self._size - 1)
            self._size -= 1
            idle[-1].retiring = idle[-1].told_to_exit = True
            self._post(idle[-1], None)
            self._busy_at = now

    def _spawn(self) -> None:
        name = f"ForkPoolWorker-{next(self._names)}"
        siblings = [c.wire for c in self._children]
        try:
            child = start_child(
                self._executor,
                name,
                siblings,
                [self._wake_r, self._wake_w],
                self._max_memory,
                self._task_events,
            )
        except OSError as exc:
            log.error("Could not start a child process: %s; retrying in 1s", exc)
            self._spawn_after = time.monotonic() + 1.0
            return
        self._children.append(child)
        for fd, sentinel in ((child.wire.fileno(), False), (child.process.sentinel, True)):
            self._fds[fd] = (child, sentinel)
            self._poller.register(fd, select.POLLIN)

    def _next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self._children if c.deadline and not c.killed]
        timeout = 1.0 if self._min != self._max or self._spawn_after else None
        if deadlines:
            until = max(0.0, min(deadlines) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout

    def _report(self, request: Request, result: Child | Outcome) -> None:
        """Tell the worker how ``request`` ended (called without the lock)."""
        if isinstance(result, Outcome):
            outcome = result
        else:
            lost = f"worker process {result.pid} {result.exit_status()}"
            outcome = after_death(self._executor, request, result.killed, result.signum, lost)
        try:
            self._done(request, outcome)
        except Exception:
            log.exception("Could not report the outcome of %r", request)

    def _wake_supervisor(self) -> None:
        """Wake the dispatcher (with the lock held): one byte until it looks."""
        if self._woken or self._wake_w < 0:
            return  # a byte waits already, or stopped
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")
            self._woken = True
