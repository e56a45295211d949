"""The prefork pool: task code runs in child processes (billiard), one task at a time each.

The parent process consumes, dispatches and settles; it never runs task code. It
keeps the requests it was handed in its own FIFO and gives one to each idle child.
A busy child is given more to queue only behind work known to be quick: every
request it holds is of a task with ``HISTORY`` runs on this worker, counted at the
slowest of them they add up to under ``QUEUE_BUDGET`` seconds, its running one has
run for less than that, and at most ``MAX_QUEUED`` wait there. So a short task
never waits behind a long one in a child's socket (Celery's ``-O fair``), and a
stream of tiny tasks does not pay a round trip to the parent per task with the
child idle in between (see docs/worker.md for the bound).

One dispatcher thread owns the children: it waits on their sockets and process
sentinels, reports each outcome to the worker, replaces children that die (the
task that was running gets ``WORKER_LOST``; the ones queued behind it never
started and are dispatched again, uncounted), retires children after
``max_tasks_per_child`` tasks or past ``max_memory_per_child`` KiB, kills a child
whose task passed its hard time limit (the task is recorded as failed with
``TimeLimitExceeded`` and acked), and with ``autoscale`` grows the pool while
requests wait and shrinks it after ``AUTOSCALE_KEEPALIVE`` idle seconds. The
messages on a child's socket are described in ``taskq.worker.child``.

billiard's own ``Pool`` is not used: it queues tasks into a shared pipe (so the
parent cannot take unstarted ones back at shutdown) and runs four threads of its
own; a dispatcher over ``Process`` and a socket pair per child does exactly this.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import operator
import os
import pickle
import select
import signal
import socket
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import billiard

from taskq import signals
from taskq.errors import TaskRevokedError, TimeLimitExceeded
from taskq.result import states
from taskq.worker import executor
from taskq.worker.child import BACK, CONTEXT_FIELDS, PROTOCOL, Wire, child_main
from taskq.worker.executor import ACK, DEAD_LETTER, REQUEUE, WORKER_LOST, Outcome, Traced
from taskq.worker.pools import QueuedPool

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.worker.pools import Done, PoolSettings
    from taskq.worker.request import Request

log = logging.getLogger("taskq.worker")

#: Seconds a pool above its autoscale minimum stays idle before it retires a child.
AUTOSCALE_KEEPALIVE = 30.0
#: Seconds of expected work a request may be queued behind in a busy child.
QUEUE_BUDGET = 0.001
#: Most requests queued in a child behind its running one.
MAX_QUEUED = 15
#: Runs of a task whose slowest is its expected run time (unknown before that many).
HISTORY = 3
#: Larger messages go to idle children only, so what waits in a child's socket
#: (at most ``MAX_QUEUED`` of them) stays under the socket's buffer and a send to a
#: busy child does not block.
QUEUE_BYTES = 8 * 1024
_SOCKET_BUFFER = 256 * 1024
_TIMEOUT, _TERMINATE = "timeout", "terminate"
_ACKED = Outcome(ACK)
_UNKNOWN = float("inf")
_fields = operator.attrgetter(*CONTEXT_FIELDS)

#: What the dispatcher reports outside its lock: an outcome, or the child that died.
_Finished = list[tuple["Request", "_Child | Outcome"]]


@dataclasses.dataclass(eq=False)
class _Child:
    process: Any
    wire: Wire
    #: Handed to it and not reported, in order: the first runs, the rest wait. Each
    #: with its seq and the run time expected when it was handed over.
    sent: collections.deque[tuple[int, Request, float]] = dataclasses.field(
        default_factory=collections.deque
    )
    since: float = 0.0  # monotonic time the first of ``sent`` became first
    deadline: float | None = None  # monotonic hard time limit of the running task
    killed: str | None = None  # _TIMEOUT or _TERMINATE: the parent ended it on purpose
    target: Request | None = None  # the request it was killed for
    signum: int = 0
    terminate: dict[str, int] = dataclasses.field(default_factory=dict)  # queued id -> signum
    tasks: int = 0
    retiring: bool = False  # gets no more work; told to exit once it holds none
    told_to_exit: bool = False

    @property
    def pid(self) -> int:
        return int(self.process.pid)


class PreforkPool(QueuedPool):
    """N child processes fed from the parent's FIFO; see the module docstring."""

    def __init__(self, app: App, done: Done, settings: PoolSettings) -> None:
        self._app = app
        self._done = done
        self._max_tasks = settings.max_tasks_per_child
        self._max_memory = settings.max_memory_per_child
        if settings.autoscale:
            self._max, self._min = settings.autoscale
        else:
            self._max = self._min = settings.concurrency
        self.concurrency = self._max
        self._size = self._min  # children wanted now
        self._children: list[_Child] = []
        self._waiting: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._handing_back = False  # shutdown: what comes back goes to the worker
        self._runs: dict[str, collections.deque[float]] = {}  # task name -> last run times
        self._expected: dict[str, float] = {}  # task name -> slowest of its last runs
        self._seq = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._woken = False  # a byte waits in the wake pipe
        self._polling = False  # the dispatcher is past its last look at ``_waiting``
        self._arrived = False  # submitted since that look, before it polls
        self._back_due = False  # the worker took the unstarted back: children must too
        self._outbox: list[tuple[_Child, bytes, list[int]]] = []  # sent outside the lock
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._fds: dict[int, tuple[_Child, bool]] = {}  # fd -> (child, is its sentinel)
        self._names = itertools.count(1)
        self._busy_at = time.monotonic()
        self._spawn_after = 0.0
        self._thread = threading.Thread(target=self._loop, name="taskq-prefork", daemon=True)

    def describe(self) -> str:
        if self._min != self._max:
            return f"{self._min}-{self._max} (prefork, autoscale)"
        return f"{self._max} (prefork)"

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
                self._wake_locked()
            else:
                self._arrived = True  # it looks again before it polls

    def take_unstarted(self) -> list[Request]:
        """The requests not handed to a child. Children give back the ones queued
        behind their running task; those are reported as ``REQUEUE``."""
        with self._cond:
            self._handing_back = self._back_due = True
            taken = list(self._waiting)
            self._waiting.clear()
            self._wake_locked()
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
                        self._kill_for(child, request, _TERMINATE, signum)
                    else:
                        child.terminate[task_id] = signum
                    return True
        return False

    def pids(self) -> list[int]:
        """The pids of the live children."""
        with self._cond:
            return [c.pid for c in self._children if c.process.is_alive()]

    def stop(self) -> None:
        """Stop the children: idle ones exit, busy ones are killed (the worker gave
        their requests back or finished them already). No outcome is reported after."""
        with self._cond:
            self._stopping = True
            self._wake_locked()
        if self._thread.is_alive():
            self._thread.join()
        for child in self._children:
            if child.sent:
                _kill(child, signal.SIGKILL)
            else:
                _send(child, None)
        deadline = time.monotonic() + 2.0
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                _kill(child, signal.SIGKILL)
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
                self._enforce_deadlines()
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
    ) -> tuple[list[tuple[_Child, list[Any]]], list[_Child]]:
        """What the children sent, and which died (without the lock: the sockets and
        the poller are the dispatcher's alone)."""
        readable: list[_Child] = []
        dead: list[_Child] = []
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
        self, inbox: list[tuple[_Child, list[Any]]], dead: list[_Child], finished: _Finished
    ) -> None:
        now = time.monotonic()
        for child, messages in inbox:
            for message in messages:
                if message[0] == "done":
                    self._done_one(child, message, finished, now)
                else:
                    self._take_back(child, set(message[1]), finished)
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

    def _post(self, child: _Child, message: Any, seqs: list[int] | None = None) -> None:
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
        batches: dict[_Child, list[tuple[int, tuple[Any, ...]]]] = {}
        for child in self._children:
            if not waiting:
                break
            if not child.sent and not child.retiring:
                self._hand(child, waiting.popleft(), batches, now)
        if waiting and not self._handing_back:
            open_ = sorted((c for c in self._children if self._may_queue(c, now)), key=_held)
            while open_:
                for child in tuple(open_):  # a round: one more each, least loaded first
                    if not waiting or not _queueable(waiting[0]):
                        open_.clear()
                        break
                    self._hand(child, waiting.popleft(), batches, now)
                    if not self._may_queue(child, now):
                        open_.remove(child)
        for child, batch in batches.items():
            self._send_batch(child, batch, finished)

    def _may_queue(self, child: _Child, now: float) -> bool:
        """Whether one more request may be queued behind what busy ``child`` holds:
        all of it has an expected run time, adding up to under ``QUEUE_BUDGET``."""
        held = len(child.sent)
        return (
            0 < held <= MAX_QUEUED
            and now - child.since < QUEUE_BUDGET
            and child.sent[0][1].acks_late
            and not (child.retiring or child.killed)
            and not (self._max_tasks and child.tasks + held >= self._max_tasks)
            and sum(expected for _, _, expected in child.sent) < QUEUE_BUDGET
        )

    def _hand(
        self,
        child: _Child,
        request: Request,
        batches: dict[_Child, list[tuple[int, tuple[Any, ...]]]],
        now: float,
    ) -> None:
        try:
            request.started()
        except Exception:
            log.exception("Could not ack %r before running it; running it anyway", request)
        seq = next(self._seq)
        expected = self._expected.get(request.name, _UNKNOWN if HISTORY else 0.0)
        child.sent.append((seq, request, expected))
        if len(child.sent) == 1:
            self._now_first(child, now)
        batches.setdefault(child, []).append((seq, _fields(request.context())))
        self._busy_at = now

    def _send_batch(
        self, child: _Child, batch: list[tuple[int, tuple[Any, ...]]], finished: _Finished
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
        self, child: _Child, batch: list[tuple[int, tuple[Any, ...]]], finished: _Finished
    ) -> list[tuple[int, tuple[Any, ...]]]:
        kept = []
        for item in batch:
            try:
                pickle.dumps(item, PROTOCOL)
            except Exception as exc:
                request = self._remove(child, {item[0]})[0]
                reason = f"could not be sent to a child process: {exc!r}"
                finished.append((request, Outcome(DEAD_LETTER, reason)))
            else:
                kept.append(item)
        return kept

    def _done_one(
        self, child: _Child, message: tuple[Any, ...], finished: _Finished, now: float
    ) -> None:
        _, seq, action, reason, runtime, rss = message
        if not child.sent or child.sent[0][0] != seq:
            log.error("Child %d reported a task it was not given (%s); ignored", child.pid, seq)
            return
        request = child.sent.popleft()[1]
        finished.append(
            (request, _ACKED if action == ACK and not reason else Outcome(action, reason))
        )
        child.tasks += 1
        self._learn(request.name, runtime)
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
            self._now_first(child, now)

    def _learn(self, name: str, runtime: float) -> None:
        if name not in self._app.tasks:  # a table of registered names only
            return
        runs = self._runs.get(name)
        if runs is None:
            runs = self._runs[name] = collections.deque(maxlen=max(1, HISTORY))
        runs.append(runtime)
        if len(runs) >= HISTORY:
            self._expected[name] = max(runs)

    def _now_first(self, child: _Child, now: float) -> None:
        """The first of ``child.sent`` started (as far as the parent can tell: the
        child started it when it reported the one before)."""
        request = child.sent[0][1]
        child.since = now
        hard = request.time_limit
        child.deadline = now + hard if hard else None
        if child.terminate:
            signum = child.terminate.pop(request.id, None)
            if signum is not None:
                self._kill_for(child, request, _TERMINATE, signum)

    def _retire(self, child: _Child) -> None:
        child.retiring = True
        if child.sent:  # queued behind the one that just ended: acks-late (``_dispatch``)
            self._post(child, BACK)

    def _take_back(self, child: _Child, seqs: set[int], finished: _Finished) -> None:
        """``child`` will not run these: dispatch them again, first in line (during a
        shutdown, hand them to the worker to give back)."""
        requests = self._remove(child, seqs)
        if self._handing_back:
            finished.extend((r, Outcome(REQUEUE)) for r in requests)
        else:
            self._waiting.extendleft(reversed(requests))

    def _remove(self, child: _Child, seqs: set[int]) -> list[Request]:
        """Take ``seqs`` off what ``child`` holds (it never started them)."""
        first = child.sent[0][0] if child.sent else None
        removed = [r for seq, r, _ in child.sent if seq in seqs]
        child.sent = collections.deque(item for item in child.sent if item[0] not in seqs)
        for request in removed:
            child.terminate.pop(request.id, None)
        if first in seqs:  # its clock and deadline were the first one's
            if child.sent:
                self._now_first(child, time.monotonic())
            else:
                child.deadline = None
        return removed

    def _reap(self, child: _Child, finished: _Finished) -> None:
        child.process.join(0.1)
        self._children.remove(child)
        for fd in [fd for fd, (c, _) in self._fds.items() if c is child]:
            self._poller.unregister(fd)
            del self._fds[fd]
        child.wire.close()
        if not child.sent:
            if not child.retiring:
                log.warning("Child %d exited (%s) while idle", child.pid, _exit(child))
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
        parent_end, child_end = socket.socketpair()
        for end in (parent_end, child_end):
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):  # best effort: the OS may cap it
                    end.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        inherited = [c.wire for c in self._children] + [parent_end, self._wake_r, self._wake_w]
        process = billiard.get_context("fork").Process(
            target=child_main,
            args=(self._app, child_end, name, inherited, self._max_memory),
            name=name,
            daemon=True,
        )
        try:
            process.start()
        except OSError as exc:
            log.error("Could not start a child process: %s; retrying in 1s", exc)
            self._spawn_after = time.monotonic() + 1.0
            parent_end.close()
            return
        finally:
            child_end.close()
        child = _Child(process, Wire(parent_end))
        self._children.append(child)
        for fd, sentinel in ((parent_end.fileno(), False), (process.sentinel, True)):
            self._fds[fd] = (child, sentinel)
            self._poller.register(fd, select.POLLIN)

    def _next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self._children if c.deadline and not c.killed]
        timeout = 1.0 if self._min != self._max or self._spawn_after else None
        if deadlines:
            until = max(0.0, min(deadlines) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.deadline is None or child.killed or now < child.deadline or not child.sent:
                continue
            request = child.sent[0][1]
            log.error(
                "Task %s[%s]: hard time limit (%gs) exceeded; killing child %d",
                request.name,
                request.id,
                request.time_limit,
                child.pid,
            )
            self._kill_for(child, request, _TIMEOUT, signal.SIGKILL)

    def _kill_for(self, child: _Child, request: Request, why: str, signum: int) -> None:
        child.killed, child.target, child.signum = why, request, signum
        _kill(child, signum)

    def _report(self, request: Request, result: _Child | Outcome) -> None:
        """Tell the worker how ``request`` ended (called without the lock)."""
        outcome = result if isinstance(result, Outcome) else self._after_death(request, result)
        try:
            self._done(request, outcome)
        except Exception:
            log.exception("Could not report the outcome of %r", request)

    def _after_death(self, request: Request, child: _Child) -> Outcome:
        """The child running ``request`` exited: record why and say what to do."""
        ctx = request.context()
        task = self._app.tasks.get(request.name)
        if child.killed == _TIMEOUT:
            error = TimeLimitExceeded(f"time limit ({request.time_limit:g}s) exceeded")
            tb = "".join(traceback.format_exception_only(type(error), error))
            traced = Traced(states.FAILURE, error, tb, runtime=request.time_limit or 0.0)
            if task is None:
                executor.store(self._app, None, ctx, states.FAILURE, error)
            else:
                executor.record(self._app, task, ctx, traced)
                executor.announce(task, ctx, traced)
            return Outcome(ACK)
        if child.killed == _TERMINATE:
            name = signal.Signals(child.signum).name
            log.info("Task %s[%s] terminated by %s", request.name, request.id, name)
            revoked = TaskRevokedError(f"terminated by {name}")
            executor.store(self._app, task, ctx, states.REVOKED, revoked)
            signals.task_revoked.send(
                task, request=ctx, terminated=True, signum=child.signum, expired=False
            )
            return Outcome(ACK)
        return Outcome(WORKER_LOST, f"worker process {child.pid} {_exit(child)}")

    def _wake_locked(self) -> None:
        """Wake the dispatcher (with the lock held): one byte until it looks."""
        if self._woken or self._wake_w < 0:
            return  # a byte waits already, or stopped
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")
            self._woken = True


def _held(child: _Child) -> int:
    return len(child.sent)


def _queueable(request: Request) -> bool:
    """Whether ``request`` may wait in a busy child: an acks-early one is acked when
    handed over, so it goes only to an idle child (a BACK never returns one)."""
    return request.acks_late and len(request.delivery.envelope.body) <= QUEUE_BYTES


def _send(child: _Child, item: Any) -> bool:
    try:
        child.wire.send(item)
        return True
    except OSError:
        return False


def _kill(child: _Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signum)


def _exit(child: _Child) -> str:
    code = child.process.exitcode
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
