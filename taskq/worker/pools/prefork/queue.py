"""The prefork pool's queueing rule: which requests may wait in a busy child, and
the expected run times it rests on.

The dispatcher (``taskq.worker.pools.prefork.pool``) gives one request to each idle child. A
busy child is given more to queue only behind work known to be quick: every
request it holds is of a task with ``HISTORY`` runs on this worker, counted at the
slowest of them they add up to under ``QUEUE_BUDGET`` seconds, its running one has
run for less than that, and at most ``MAX_QUEUED`` wait there. So a short task
never waits behind a long one in a child's socket (Celery's ``-O fair``), and a
stream of tiny tasks does not pay a round trip to the parent per task with the
child idle in between (see docs/worker.md for the bound).
"""

from __future__ import annotations

import collections
from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskq.worker.pools.prefork.children import Child
    from taskq.worker.request import Request

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
#: The expected run time of a task without ``HISTORY`` runs yet.
UNKNOWN = float("inf")


class RunTimes:
    """The last ``HISTORY`` run times of each registered task, and the slowest of
    them as its expected run time (``expected``; ``unknown`` for the others)."""

    def __init__(self, tasks: Collection[str]) -> None:
        self._tasks = tasks
        self._runs: dict[str, collections.deque[float]] = {}  # task name -> last run times
        self.expected: dict[str, float] = {}  # task name -> slowest of its last runs
        self.unknown = UNKNOWN if HISTORY else 0.0

    def learn(self, name: str, runtime: float) -> None:
        if name not in self._tasks:  # a table of registered names only
            return
        runs = self._runs.get(name)
        if runs is None:
            runs = self._runs[name] = collections.deque(maxlen=max(1, HISTORY))
        runs.append(runtime)
        if len(runs) >= HISTORY:
            self.expected[name] = max(runs)


def may_queue(child: Child, now: float, max_tasks: int | None) -> bool:
    """Whether one more request may be queued behind what busy ``child`` holds:
    all of it has an expected run time, adding up to under ``QUEUE_BUDGET``."""
    held = len(child.sent)
    return (
        0 < held <= MAX_QUEUED
        and now - child.since < QUEUE_BUDGET
        and child.sent[0][1].acks_late
        and not (child.retiring or child.killed)
        and not (max_tasks and child.tasks + held >= max_tasks)
        and sum(expected for _, _, expected in child.sent) < QUEUE_BUDGET
    )


def queueable(request: Request) -> bool:
    """Whether ``request`` may wait in a busy child: an acks-early one is acked when
    handed over, so it goes only to an idle child (a BACK never returns one)."""
    return request.acks_late and len(request.delivery.envelope.body) <= QUEUE_BYTES


def held(child: Child) -> int:
    return len(child.sent)
