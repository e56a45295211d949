"""The prefork pool: task code runs in child processes (billiard), one task each.

The parent process consumes, dispatches and settles; it never runs task code. It
keeps the requests it was handed in its own FIFO and sends one to a child only
when that child is idle, so a short task never waits in the pipe of a child busy
with a long one (Celery's ``-O fair``, here the only mode).

One dispatcher thread owns the children: it waits on their pipes and process
sentinels, reports each outcome to the worker, replaces children that die (their
task gets ``WORKER_LOST``), retires children after ``max_tasks_per_child`` tasks
or past ``max_memory_per_child`` KiB, kills a child whose task passed its hard
time limit (the task is recorded as failed with ``TimeLimitExceeded`` and acked),
and with ``autoscale`` grows the pool while requests wait and shrinks it after
``AUTOSCALE_KEEPALIVE`` idle seconds.

billiard's own ``Pool`` is not used: it queues tasks into a shared pipe (so the
parent cannot take unstarted ones back at shutdown) and runs four threads of its
own; a dispatcher over ``Process`` and ``Pipe`` is smaller and does exactly this.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import billiard
from billiard.connection import wait

from taskq import signals
from taskq.errors import TaskRevokedError, TimeLimitExceeded
from taskq.result import states
from taskq.worker import executor
from taskq.worker.child import child_main
from taskq.worker.executor import ACK, WORKER_LOST, Outcome, Traced
from taskq.worker.pools import QueuedPool

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.worker.pools import Done, PoolSettings
    from taskq.worker.request import Request

log = logging.getLogger("taskq.worker")

#: Seconds a pool above its autoscale minimum stays idle before it retires a child.
AUTOSCALE_KEEPALIVE = 30.0
_TIMEOUT, _TERMINATE = "timeout", "terminate"


@dataclasses.dataclass(eq=False)
class _Child:
    process: Any
    conn: Any
    request: Request | None = None
    deadline: float | None = None  # monotonic hard time limit of the running task
    killed: str | None = None  # _TIMEOUT or _TERMINATE: the parent ended it on purpose
    signum: int = 0
    tasks: int = 0
    retiring: bool = False  # told to exit; gets no more work

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
        self._cond = threading.Condition()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
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
        self._wake()

    def running(self) -> list[Request]:
        with self._cond:
            return [c.request for c in self._children if c.request is not None]

    def join(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._waiting and all(c.request is None for c in self._children),
                timeout,
            )

    def terminate(self, task_id: str, signum: int) -> bool:
        """Send ``signum`` to the child running ``task_id``; False if none runs it."""
        with self._cond:
            for child in self._children:
                if child.request is not None and child.request.id == task_id:
                    child.killed, child.signum = _TERMINATE, signum
                    _kill(child, signum)
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
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        for child in self._children:
            if child.request is None:
                _send(child, None)
            else:
                _kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                _kill(child, signal.SIGKILL)
                child.process.join(1.0)
            child.conn.close()
        self._children.clear()
        with self._cond:
            # A closed descriptor's number may be reused: never write to it again.
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
        os.close(wake_r)
        os.close(wake_w)

    # -- the dispatcher thread ---------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._replace()
                self._autoscale()
                self._dispatch()
                busy = [c.conn for c in self._children if c.request is not None]
                sentinels = [c.process.sentinel for c in self._children]
                timeout = self._next_deadline()
            ready = set(wait([self._wake_r, *busy, *sentinels], timeout))
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            finished = self._collect(ready)
            for request, child in finished:
                self._report(request, child)
            self._enforce_deadlines()

    def _dispatch(self) -> None:
        for child in self._children:
            if not self._waiting:
                return
            if child.request is not None or child.retiring:
                continue
            request = self._waiting.popleft()
            try:
                request.started()
            except Exception:
                log.exception("Could not ack %r before running it; running it anyway", request)
            if not _send(child, request.context()):
                self._waiting.appendleft(request)  # the child died; its sentinel will tell
                continue
            child.request = request
            hard = request.time_limit
            child.deadline = time.monotonic() + hard if hard else None
            self._busy_at = time.monotonic()

    def _collect(self, ready: set[Any]) -> list[tuple[Request, _Child | Outcome]]:
        """Read results and reap dead children; what to report, outside the lock."""
        finished: list[tuple[Request, _Child | Outcome]] = []
        with self._cond:
            for child in list(self._children):
                dead = child.process.sentinel in ready
                if child.conn in ready or dead:
                    self._read(child, finished)
                if dead:
                    self._reap(child, finished)
            self._cond.notify_all()
        return finished

    def _read(self, child: _Child, finished: list[tuple[Request, _Child | Outcome]]) -> None:
        try:
            while child.conn.poll():
                _, outcome, rss = child.conn.recv()
                if child.request is not None:
                    finished.append((child.request, outcome))
                child.request, child.deadline = None, None
                child.tasks += 1
                if child.killed:
                    # Signalled as it finished: do not hand it more work, replace it.
                    child.retiring = True
                    _send(child, None)
                else:
                    self._maybe_retire(child, rss)
        except (EOFError, OSError):
            pass  # it died mid-message; the sentinel reports it

    def _maybe_retire(self, child: _Child, rss: int) -> None:
        if self._max_tasks and child.tasks >= self._max_tasks:
            log.info(
                "Child %d ran %d tasks (max_tasks_per_child): replacing it", child.pid, child.tasks
            )
        elif self._max_memory and rss > self._max_memory:
            log.info(
                "Child %d uses %d KiB (max_memory_per_child %d KiB): replacing it",
                child.pid,
                rss,
                self._max_memory,
            )
        else:
            return
        child.retiring = True
        _send(child, None)

    def _reap(self, child: _Child, finished: list[tuple[Request, _Child | Outcome]]) -> None:
        child.process.join(0.1)
        self._children.remove(child)
        child.conn.close()
        if child.request is not None:
            finished.append((child.request, child))
        elif not child.retiring:
            log.warning("Child %d exited (%s) while idle", child.pid, _exit(child))

    def _replace(self) -> None:
        missing = self._size - len(self._children)
        if missing > 0 and time.monotonic() >= self._spawn_after:
            for _ in range(missing):
                self._spawn()

    def _autoscale(self) -> None:
        if self._min == self._max:
            return
        now = time.monotonic()
        idle = [c for c in self._children if c.request is None and not c.retiring]
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
            idle[-1].retiring = True
            _send(idle[-1], None)
            self._busy_at = now

    def _spawn(self) -> None:
        name = f"ForkPoolWorker-{next(self._names)}"
        parent_end, child_end = billiard.Pipe(duplex=True)
        inherited = [c.conn for c in self._children] + [parent_end, self._wake_r, self._wake_w]
        process = billiard.get_context("fork").Process(
            target=child_main,
            args=(self._app, child_end, name, inherited),
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
        self._children.append(_Child(process, parent_end))

    def _next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self._children if c.deadline and not c.killed]
        timeout = 1.0 if self._min != self._max or self._spawn_after else None
        if deadlines:
            until = max(0.0, min(deadlines) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        return timeout

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self._cond:
            for child in self._children:
                if child.deadline is None or child.killed or now < child.deadline:
                    continue
                request = child.request
                assert request is not None
                log.error(
                    "Task %s[%s]: hard time limit (%gs) exceeded; killing child %d",
                    request.name,
                    request.id,
                    request.time_limit,
                    child.pid,
                )
                child.killed = _TIMEOUT
                _kill(child, signal.SIGKILL)

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

    def _wake(self) -> None:
        with self._cond:
            if self._wake_w < 0:
                return  # stopped
            # Full: the dispatcher is awake already.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"!")


def _send(child: _Child, item: Any) -> bool:
    try:
        child.conn.send(item)
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
