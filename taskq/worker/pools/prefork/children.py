"""The prefork pool's children as its dispatcher sees them: one record per child
process, starting one, killing one, and what a child's death means for its task.

A ``Child`` holds the requests handed to it and not reported yet, in order: the
first runs, the rest wait behind it (``taskq.worker.pools.prefork.queue`` decides which
may). When the first is reported the next becomes first, and its clock and hard
time limit start. The parent kills a child on purpose for two reasons only: its
task passed its hard time limit (``TIMEOUT``: the task is recorded as failed with
``TimeLimitExceeded`` and acked) or it was revoked with ``terminate`` (``TERMINATE``:
recorded as revoked and acked). Any other death is ``WORKER_LOST`` for the task
that was running. The dispatcher itself (``taskq.worker.pools.prefork.pool``) owns the list of
children, replaces the dead ones and dispatches what they held again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
import traceback
from typing import TYPE_CHECKING, Any

import billiard

from taskq import signals
from taskq.errors import TaskRevokedError, TimeLimitExceeded
from taskq.result import State
from taskq.worker.executor import Action, Executor, Outcome, Summary, Traced, announce
from taskq.worker.pools.prefork.child import Wire, child_main

if TYPE_CHECKING:
    from taskq.worker.request import Request

log = logging.getLogger("taskq.worker")

#: Why the parent ended a child on purpose (``Child.killed``).
TIMEOUT, TERMINATE = "timeout", "terminate"
_SOCKET_BUFFER = 256 * 1024


@dataclasses.dataclass(eq=False)
class Child:
    process: Any
    wire: Wire
    #: Handed to it and not reported, in order: the first runs, the rest wait. Each
    #: with its seq and the run time expected when it was handed over.
    sent: collections.deque[tuple[int, Request, float]] = dataclasses.field(
        default_factory=collections.deque
    )
    since: float = 0.0  # monotonic time the first of ``sent`` became first
    deadline: float | None = None  # monotonic hard time limit of the running task
    killed: str | None = None  # TIMEOUT or TERMINATE: the parent ended it on purpose
    target: Request | None = None  # the request it was killed for
    signum: int = 0
    terminate: dict[str, int] = dataclasses.field(default_factory=dict)  # queued id -> signum
    tasks: int = 0
    retiring: bool = False  # gets no more work; told to exit once it holds none
    told_to_exit: bool = False

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def now_first(self, now: float) -> None:
        """The first of ``sent`` started (as far as the parent can tell: the child
        started it when it reported the one before)."""
        request = self.sent[0][1]
        self.since = now
        hard = request.time_limit
        self.deadline = now + hard if hard else None
        if self.terminate:
            signum = self.terminate.pop(request.id, None)
            if signum is not None:
                self.kill_for(request, TERMINATE, signum)

    def remove(self, seqs: set[int]) -> list[Request]:
        """Take ``seqs`` off what this child holds (it never started them)."""
        first = self.sent[0][0] if self.sent else None
        removed = [r for seq, r, _ in self.sent if seq in seqs]
        self.sent = collections.deque(item for item in self.sent if item[0] not in seqs)
        for request in removed:
            self.terminate.pop(request.id, None)
        if first in seqs:  # its clock and deadline were the first one's
            if self.sent:
                self.now_first(time.monotonic())
            else:
                self.deadline = None
        return removed

    def kill_for(self, request: Request, why: str, signum: int) -> None:
        self.killed, self.target, self.signum = why, request, signum
        self.kill(signum)

    def kill(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def send(self, item: Any) -> bool:
        try:
            self.wire.send(item)
            return True
        except OSError:
            return False

    def exit_status(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


def start_child(
    executor: Executor,
    name: str,
    siblings: list[Wire],
    pool_fds: list[int],
    max_memory: int | None,
    task_events: bool = False,
) -> Child:
    """Fork a child process running ``child_main`` on a new socket pair.

    ``siblings`` (the other children's wires) and ``pool_fds`` are closed in the
    child; ``task_events`` says whether it reports what task events need. Raises
    ``OSError`` if the process could not be started.
    """
    parent_end, child_end = socket.socketpair()
    for end in (parent_end, child_end):
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):  # best effort: the OS may cap it
                end.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
    inherited = [*siblings, parent_end, *pool_fds]
    process = billiard.get_context("fork").Process(
        target=child_main,
        args=(executor, child_end, name, inherited, max_memory, task_events),
        name=name,
        daemon=True,
    )
    try:
        process.start()
    except OSError:
        parent_end.close()
        raise
    finally:
        child_end.close()
    return Child(process, Wire(parent_end))


def enforce_deadlines(children: list[Child]) -> None:
    """Kill each child whose running task passed its hard time limit."""
    now = time.monotonic()
    for child in children:
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
        child.kill_for(request, TIMEOUT, signal.SIGKILL)


def after_death(
    executor: Executor, request: Request, killed: str | None, signum: int, lost: str
) -> Outcome:
    """The child running ``request`` exited: record why and say what to do. ``killed``
    is why the parent ended it (``TIMEOUT``, ``TERMINATE``, None) and ``signum`` with
    what; ``lost`` says how it ended otherwise (``WORKER_LOST``'s reason)."""
    ctx = request.context()
    task = executor.tasks.get(request.name)
    if killed == TIMEOUT:
        error = TimeLimitExceeded(f"time limit ({request.time_limit:g}s) exceeded")
        tb = "".join(traceback.format_exception_only(type(error), error))
        traced = Traced(State.FAILURE, error, tb, runtime=request.time_limit or 0.0)
        if task is None:
            executor.store(None, ctx, State.FAILURE, error)
        else:
            executor.record(task, ctx, traced)
            announce(task, ctx, traced)
        return Outcome(Action.ACK, traced=traced)
    if killed == TERMINATE:
        name = signal.Signals(signum).name
        log.info("Task %s[%s] terminated by %s", request.name, request.id, name)
        revoked = TaskRevokedError(f"terminated by {name}")
        executor.store(task, ctx, State.REVOKED, revoked)
        signals.task_revoked.send(task, request=ctx, terminated=True, signum=signum, expired=False)
        return Outcome(Action.ACK, summary=Summary(State.REVOKED, f"terminated by {name}"))
    return Outcome(Action.WORKER_LOST, lost)
