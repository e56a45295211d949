"""What the gevent and eventlet pools share: one greenlet per running task.

The process is monkey-patched before anything is imported (``taskq.monkey``), so
the worker's own threads (consumer, heartbeat, control) are greenlets too and
every socket wait switches to another greenlet. Up to ``concurrency`` requests run
at once, each in a greenlet that goes on with the next waiting request when its
own is done; the rest wait in a local FIFO (the worker leases at most
``concurrency * worker_prefetch_multiplier``).

What the pools promise, and what they cannot:

* Time limits are the library's timeouts, raised in the task's greenlet:
  ``SoftTimeLimitExceeded`` at the soft limit (the task may catch it and clean up)
  and ``TimeLimitExceeded`` at the hard one. A greenlet sees them only where it
  yields to the event loop (a socket wait, a sleep, a lock): a task that computes
  or sits in a C call without yielding is not stopped, it finishes late and the
  worker logs that it ran past its hard limit. Only the prefork pool can stop
  such a task, by killing its process.
* ``revoke(terminate=True)`` raises in the task's greenlet at its next yield and
  records it REVOKED (any signal name: there is no process to signal).
* Warm shutdown lets running greenlets finish; cold shutdown kills them (the
  worker has given their messages back).
* The lease is renewed from a thread of the OS (``taskq.worker.lease``), so a task
  that never yields does not let it run out.
* A greenlet that raises anything unexpected gives its message back and the
  worker goes on.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from taskq import monkey, signals
from taskq.errors import ConfigurationError, TaskRevokedError, TimeLimitExceeded
from taskq.result import State
from taskq.worker.executor import Action, Executor, Outcome, Traced, trace
from taskq.worker.limits import Limit, describe, schedule
from taskq.worker.pools.base import QueuedPool

if TYPE_CHECKING:
    from taskq.context import Context
    from taskq.worker.pools.base import Done
    from taskq.worker.request import Request

log = logging.getLogger("taskq.worker")


class Terminated(BaseException):
    """Thrown into a task's greenlet by ``revoke(terminate=True)``. A BaseException,
    so the task's ``except Exception`` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated (signal {signum})")
        self.signum = signum


class Stopped(BaseException):
    """Thrown into running greenlets by a cold shutdown: the worker gave their
    messages back, nothing is to be reported."""


def require(pool: str, module: str) -> None:
    """Check that ``pool``'s library is installed and patched this process.

    Raises:
        ConfigurationError: saying which extra to install, or how to start the
            worker so that the process is patched first.
    """
    extra = monkey.GREEN_POOLS[pool]
    try:
        __import__(module)
    except ImportError:
        raise ConfigurationError(
            f"The {pool} pool needs the {module} library, which is not installed. "
            f"Install it with: pip install '{extra}'"
        ) from None
    if not monkey.patched(pool):
        raise ConfigurationError(
            f"The {pool} pool needs this process monkey-patched by {module} before the "
            f"app or any library is imported, and it is not. Start the worker with "
            f"'taskq worker -P {pool}' (or 'python -m taskq worker -P {pool}'), which "
            f"patches first; a pool named only in worker_pool is known too late. In "
            f"a program of your own, patch first thing (see docs/worker.md)."
        )


class GreenPool(QueuedPool):
    """One greenlet per running request; the library parts are the subclass's."""

    kind = "green"

    def __init__(self, concurrency: int, executor: Executor, done: Done) -> None:
        self.concurrency = concurrency
        self._executor = executor
        self._done = done
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: dict[Request, Any] = {}  # request -> its greenlet
        self._tracing: set[Request] = set()  # inside the task's own code
        self._cond = threading.Condition()  # patched: waits switch greenlets

    # -- the library's parts -----------------------------------------------------------

    def _spawn(self, fn: Callable[..., None], *args: Any) -> Any:
        """Start ``fn(*args)`` in a new greenlet; return it."""
        raise NotImplementedError

    def _current(self) -> Any:
        """The running greenlet."""
        raise NotImplementedError

    def _timeout(self, seconds: float, exc: BaseException) -> Any:
        """A started timer raising ``exc`` in this greenlet; ``_cancel`` stops it."""
        raise NotImplementedError

    def _cancel(self, timer: Any) -> None:
        raise NotImplementedError

    def _soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event loop's own greenlet, at its next turn."""
        raise NotImplementedError

    def _kill_all(self, greenlets: list[Any], exc: BaseException, timeout: float) -> None:
        raise NotImplementedError

    # -- the pool ----------------------------------------------------------------------

    def describe(self) -> str:
        return f"{self.concurrency} ({self.kind})"

    def start(self) -> None:
        pass

    def submit(self, request: Request) -> None:
        with self._cond:
            if len(self._running) >= self.concurrency:
                self._waiting.append(request)
            else:  # spawning only schedules the greenlet: nothing yields here
                self._running[request] = self._spawn(self._serve, request)

    def _serve(self, request: Request | None) -> None:
        """Run ``request``, then the next waiting one, until none waits."""
        while request is not None:
            try:
                self._run(request)
            except Stopped:
                return  # cold shutdown: the worker gave the message back
            except BaseException:  # never let a greenlet die with its slot taken
                log.exception("Internal error running %r; giving it back", request)
                self._report(request, Outcome(Action.REQUEUE))
            with self._cond:
                self._running.pop(request, None)
                room = len(self._running) < self.concurrency  # the pool may have shrunk
                request = self._waiting.popleft() if self._waiting and room else None
                if request is not None:
                    self._running[request] = self._current()
                self._cond.notify_all()

    def resize(self, delta: int) -> int:
        """Let ``delta`` more (or fewer) tasks run at once: growing starts waiting
        requests now; shrinking lets running tasks finish, then runs fewer."""
        with self._cond:
            self.concurrency = max(1, self.concurrency + delta)
            while self._waiting and len(self._running) < self.concurrency:
                request = self._waiting.popleft()
                self._running[request] = self._spawn(self._serve, request)
            return self.concurrency

    def _run(self, request: Request) -> None:
        try:
            request.started()
            ctx = request.context()
            task = self._executor.begin(ctx)
            if isinstance(task, Outcome):
                outcome = task
            else:
                traced = self._trace(request, task, ctx)
                if isinstance(traced, Terminated):
                    outcome = self._terminated(request, task, ctx, traced.signum)
                else:
                    outcome = self._executor.finish(task, ctx, traced)
        except Exception:
            log.exception("Internal error running %r; giving it back", request)
            outcome = Outcome(Action.REQUEUE)
        self._report(request, outcome)

    def _trace(self, request: Request, task: Any, ctx: Context) -> Traced | Terminated:
        """The task's run, or how ``revoke(terminate=True)`` stopped it."""
        soft, hard = ctx.soft_time_limit, ctx.time_limit
        self._tracing.add(request)
        try:
            traced = trace(task, ctx, (soft, hard), self._limits)
        except Terminated as stopped:
            return stopped
        except Stopped:
            raise
        except BaseException as exc:  # SystemExit, GreenletExit...: fails the task only
            traced = Traced(State.FAILURE, exc, traceback.format_exc())
        finally:
            # Before anything below can yield: from here a terminate is ignored.
            self._tracing.discard(request)
        if hard and traced.runtime > hard and not isinstance(traced.value, TimeLimitExceeded):
            log.warning(
                "Task %s[%s] ran %.1fs, past its hard time limit (%gs), without yielding "
                "to the %s event loop, which alone can stop it; only the prefork pool "
                "can stop a task that never yields",
                request.name,
                request.id,
                traced.runtime,
                hard,
                self.kind,
            )
        return traced

    @contextlib.contextmanager
    def _limits(self, soft: float | None, hard: float | None) -> Iterator[None]:
        limits: list[Limit] = schedule(soft, hard)
        timers = [self._timeout(s, kind(describe(kind, s))) for kind, s in limits]
        try:
            yield
        finally:
            for timer in timers:
                self._cancel(timer)

    def _terminated(self, request: Request, task: Any, ctx: Context, signum: int) -> Outcome:
        log.info("Task %s[%s] terminated", request.name, request.id)
        error = TaskRevokedError("terminated")
        self._executor.store(task, ctx, State.REVOKED, error)
        signals.task_revoked.send(task, request=ctx, terminated=True, signum=signum, expired=False)
        return Outcome(Action.ACK)

    def _report(self, request: Request, outcome: Outcome) -> None:
        try:
            self._done(request, outcome)
        except Exception:
            log.exception("Could not settle %r; its lease will return it", request)

    def terminate(self, task_id: str, signum: int) -> bool:
        """Raise ``Terminated`` in the greenlet of ``task_id`` at its next yield."""
        with self._cond:
            found = [(r, g) for r, g in self._running.items() if r.id == task_id]
        if not found:
            return False
        request, greenlet = found[0]

        def throw() -> None:
            # On the loop's greenlet, so the task's greenlet is parked at a yield:
            # inside its own code exactly when it is still in _tracing.
            if request in self._tracing:
                greenlet.throw(Terminated(signum))

        self._soon(throw)
        return True

    def stop(self) -> None:
        """Kill what still runs (the worker gave those messages back already)."""
        with self._cond:
            greenlets = list(self._running.values())
        if greenlets:
            self._kill_all(greenlets, Stopped(), 5.0)
