"""The asyncio pool: ``async def`` tasks run natively on one event loop.

Up to ``concurrency`` requests run at once (100 by default for this pool). A
coroutine task is awaited on the pool's loop, in a thread of its own; a plain
function task runs in a thread executor of the same size. Bookkeeping that
blocks (result backend writes, acks) runs in a small separate executor, so the
loop keeps serving the other tasks.

Time limits on coroutines cancel them: at the soft limit the coroutine sees
``asyncio.CancelledError`` (it may clean up, or catch it and go on) and, if the
cancellation ends it, the task fails with ``SoftTimeLimitExceeded``; at the hard
limit it is cancelled again and fails with ``TimeLimitExceeded``.
``revoke(terminate=True)`` cancels a running coroutine (any signal name). Plain
functions get the thread behaviour (see ``taskq.worker.limits``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import inspect
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from taskq import signals
from taskq.context import Context, current_request
from taskq.errors import SoftTimeLimitExceeded, TaskqError, TaskRevokedError, TimeLimitExceeded
from taskq.result import State
from taskq.worker.executor import (
    Action,
    Executor,
    Outcome,
    Summary,
    Traced,
    classify,
    internal_error,
)
from taskq.worker.limits import describe
from taskq.worker.pools.base import QueuedPool

if TYPE_CHECKING:
    from taskq.task import Task
    from taskq.worker.pools.base import Done
    from taskq.worker.request import Request

log = logging.getLogger("taskq.worker")

T = TypeVar("T")


class _Handled(enum.Enum):
    """A request whose outcome needs no report from ``_run``."""

    HANDLED = "handled"


Handled = _Handled.HANDLED


class AsyncioPool(QueuedPool):
    """One event loop in a thread; see the module docstring."""

    def __init__(self, concurrency: int, executor: Executor, done: Done) -> None:
        self.concurrency = concurrency
        self._executor = executor
        self._done = done
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="taskq-asyncio", daemon=True)
        self._sync = ThreadPoolExecutor(concurrency, thread_name_prefix="taskq-asyncio-sync")
        self._io = ThreadPoolExecutor(8, thread_name_prefix="taskq-asyncio-io")
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: dict[Request, asyncio.Task[None]] = {}
        self._signum: dict[Request, int] = {}
        self._finishing: set[Request] = set()  # ran; its outcome is being reported
        self._reporter = _Reporter(self._loop)
        self._cond = threading.Condition()
        self._stopping = False

    def describe(self) -> str:
        return f"{self.concurrency} (asyncio)"

    def start(self) -> None:
        self._thread.start()
        self._reporter.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, request: Request) -> None:
        with self._cond:
            self._waiting.append(request)
        self._loop.call_soon_threadsafe(self._pump)

    def _pump(self) -> None:
        """Start waiting requests while there is room (on the loop)."""
        with self._cond:
            while self._waiting and len(self._running) < self.concurrency and not self._stopping:
                request = self._waiting.popleft()
                self._running[request] = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            outcome = await self._outcome(request)
            if outcome is not Handled:
                await self._blocking(self._done, request, outcome)
        finally:
            self._finishing.discard(request)
            with self._cond:
                self._running.pop(request, None)
                self._cond.notify_all()
            self._pump()

    async def _outcome(self, request: Request) -> Outcome | _Handled:
        """The outcome to report, or ``Handled`` when there is none to report: the
        reporter thread reported it already, or a cold shutdown gave it back."""
        ctx = request.context()
        try:
            # A clock read; a broker round trip only after a lapsed lease.
            if not request.may_run():
                return Outcome(Action.GONE)
            if request.acks_late:
                request.started()  # no I/O: the time and, maybe, a task-started event
            else:
                await self._blocking(request.started)
            task = self._executor.tasks.get(request.name)
            if task is not None and inspect.iscoroutinefunction(task.fn):
                return await self._run_coroutine(request, task, ctx)
            call = functools.partial(self._executor.execute, ctx)
            return await self._loop.run_in_executor(self._sync, call)
        except asyncio.CancelledError:
            if request in self._finishing:
                return Handled  # cancelled after the task ran: _finish reports it
            if self._stopping:
                return Handled  # cold shutdown: the worker gave the request back
            return await self._blocking(self._terminated, request, ctx)
        except Exception as exc:
            return internal_error(request, exc)

    async def _run_coroutine(
        self, request: Request, task: Task[Any, Any], ctx: Context
    ) -> Outcome | _Handled:
        # ``begin`` writes to the backend only to record STARTED or an expiry;
        # otherwise it runs here. Outcomes are recorded and reported by the reporter
        # thread in batches: a thread hop per task was most of this pool's cost.
        if self._executor.policies[task.name].track_started or ctx.expires is not None:
            begun = await self._blocking(self._executor.begin, ctx)
        else:
            begun = self._executor.begin(ctx)
        if isinstance(begun, Outcome):
            return begun
        traced = await trace_async(task, ctx)
        self._finishing.add(request)
        await self._reporter.report(functools.partial(self._finish, request, task, ctx, traced))
        return Handled

    def _finish(self, request: Request, task: Task[Any, Any], ctx: Context, traced: Traced) -> None:
        try:
            self._done(request, self._executor.finish(task, ctx, traced))
        except Exception as exc:
            self._done(request, internal_error(request, exc))

    def _terminated(self, request: Request, ctx: Context) -> Outcome:
        signum = self._signum.pop(request, 0)
        task = self._executor.tasks.get(request.name)
        log.info("Task %s[%s] terminated (cancelled)", request.name, request.id)
        self._executor.store(task, ctx, State.REVOKED, TaskRevokedError("terminated (cancelled)"))
        signals.task_revoked.send(task, request=ctx, terminated=True, signum=signum, expired=False)
        return Outcome(Action.ACK, summary=Summary(State.REVOKED, "terminated (cancelled)"))

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._io, functools.partial(fn, *args))

    def resize(self, delta: int) -> int:
        """Allow ``delta`` more (or fewer) coroutines at once. Plain functions still
        share the thread executor sized at start."""
        with self._cond:
            self.concurrency = max(1, self.concurrency + delta)
        self._loop.call_soon_threadsafe(self._pump)
        return self.concurrency

    def terminate(self, task_id: str, signum: int) -> bool:
        """Cancel the coroutine of ``task_id`` (plain functions cannot be stopped)."""
        with self._cond:
            for request, job in self._running.items():
                if request.id == task_id:
                    task = self._executor.tasks.get(request.name)
                    if task is None or not inspect.iscoroutinefunction(task.fn):
                        log.warning(
                            "Task %s was revoked with terminate=True, but it is a plain "
                            "function running in a thread, which cannot be stopped",
                            task_id,
                        )
                        return False
                    self._signum[request] = signum
                    self._loop.call_soon_threadsafe(job.cancel)
                    return True
        return False

    def stop(self) -> None:
        """Cancel what still runs (given back by the worker already) and stop the loop."""
        with self._cond:
            self._stopping = True
            jobs = list(self._running.values())
        if self._thread.is_alive():
            for job in jobs:
                self._loop.call_soon_threadsafe(job.cancel)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        self._reporter.stop()  # every outcome reported: no message left unsettled
        if not self._thread.is_alive():
            self._loop.close()
        self._sync.shutdown(wait=False, cancel_futures=True)
        # Outcomes being reported finish first, so no message is left unsettled.
        self._io.shutdown(wait=True, cancel_futures=True)


class _Reporter:
    """A thread that runs the loop's reporting jobs (record the outcome, settle the
    message) in batches, and wakes the loop once per batch to resume their tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], asyncio.Future[None]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="taskq-asyncio-report")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def report(self, job: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``job`` on the reporter thread (call on the loop); await the result."""
        done = self._loop.create_future()
        self._jobs.put((job, done))
        return done

    def stop(self) -> None:
        """Run the jobs already queued, then stop the thread."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _serve(self) -> None:
        while True:
            batch = [self._jobs.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(self._jobs.get_nowait())
            finished = []
            for item in batch:
                if item is not None:
                    job, done = item
                    job()  # _finish: never raises
                    finished.append(done)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_resolve, finished)
            if None in batch:
                return


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def trace_async(task: Task[Any, Any], ctx: Context) -> Traced:
    """``executor.trace`` for a coroutine task, awaited on the running loop."""
    token = current_request.set(ctx)
    start = time.monotonic()
    try:
        value = await _limited(
            task.run(*ctx.args, **ctx.kwargs), ctx.soft_time_limit, ctx.time_limit
        )
        return Traced(State.SUCCESS, value, runtime=time.monotonic() - start)
    except Exception as exc:
        return classify(task, ctx, exc, time.monotonic() - start)
    finally:
        current_request.reset(token)


async def _limited(awaitable: Awaitable[T], soft: float | None, hard: float | None) -> T:
    """Await ``awaitable``, cancelling it at each limit; a cancellation caused by a
    limit comes out as ``SoftTimeLimitExceeded`` or ``TimeLimitExceeded``."""
    limits: list[tuple[type[TaskqError], float]] = []
    if soft and not (hard and hard <= soft):
        limits.append((SoftTimeLimitExceeded, soft))
    if hard:
        limits.append((TimeLimitExceeded, hard))
    if not limits:
        return await awaitable
    inner = asyncio.ensure_future(awaitable)
    fired: list[tuple[type[TaskqError], float]] = []

    def fire(kind: type[TaskqError], seconds: float) -> None:
        if not inner.done():
            fired.append((kind, seconds))
            inner.cancel(describe(kind, seconds))

    loop = asyncio.get_running_loop()
    handles = [loop.call_later(seconds, fire, kind, seconds) for kind, seconds in limits]
    try:
        return await inner
    except asyncio.CancelledError:
        if fired and inner.cancelled() and not _cancelling():
            kind, seconds = fired[-1]
            raise kind(describe(kind, seconds)) from None
        raise
    finally:
        for handle in handles:
            handle.cancel()


def _cancelling() -> bool:
    """True when the running asyncio task itself was cancelled (not just the inner one)."""
    current = asyncio.current_task()
    count = getattr(current, "cancelling", None)
    return bool(count and count())
