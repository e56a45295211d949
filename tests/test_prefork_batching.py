"""The dispatching prefork pool (RabbitMQ, SQLite) queues requests behind short
tasks in a child (pipelining), and keeps every guarantee: lost children, time
limits, terminate, recycling and shutdown handle the queued requests too.
``forced`` makes every task count as short, so a test decides what queues where
instead of relying on timing. On Redis the children consume on their own
(tests/test_prefork_consuming.py); ``dispatching`` gives these tests the
dispatching pool on the Redis app they share with the rest of the suite."""

from __future__ import annotations

import collections
import os
import signal
import time
from typing import Any

import pytest

from taskq import App, states
from taskq.errors import TaskRevokedError, TimeLimitExceeded
from taskq.message import LOST_HEADER
from taskq.task import Task
from taskq.testing import running_worker
from taskq.worker.pools.prefork import consuming
from taskq.worker.pools.prefork import pool as prefork
from taskq.worker.pools.prefork import queue as prefork_queue
from taskq.worker.pools.prefork.child import rss_kib
from tests.waiting import wait_until
from tests.worker_support import Gate, Ledger


@pytest.fixture(autouse=True)
def dispatching(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent dispatches every request, as on RabbitMQ and SQLite."""
    monkeypatch.setattr(consuming, "SCHEMES", frozenset())


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task counts as quick: a busy child always takes more, up to ``MAX_QUEUED``."""
    monkeypatch.setattr(prefork_queue, "HISTORY", 0)
    monkeypatch.setattr(prefork_queue, "QUEUE_BUDGET", 3600.0)


def prefork_worker(app: App, concurrency: int = 1, **options: Any) -> Any:
    options.setdefault("shutdown_timeout", 10.0)
    return running_worker(app, pool="prefork", concurrency=concurrency, **options)


def step_task(app: App, ledger: Ledger, release: Gate) -> Task[..., int]:
    """``t.step(i, wait=False)``: logs ``i:<lost count>``, waits at the gate when asked."""

    @app.task(name="t.step", bind=True)
    def step(self: Any, i: int, wait: bool = False) -> int:
        ledger.append(f"{i}:{int(self.request.headers.get(LOST_HEADER) or 0)}")
        if wait:
            release.wait()
        return i

    return step


def test_short_tasks_are_queued_in_a_busy_child(
    app: App, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[int] = []
    hand = prefork.PreforkPool._hand

    def spy(self: prefork.PreforkPool, child: Any, *args: Any) -> None:
        hand(self, child, *args)
        held.append(len(child.sent))

    monkeypatch.setattr(prefork.PreforkPool, "_hand", spy)
    monkeypatch.setattr(prefork_queue, "QUEUE_BUDGET", 0.05)  # a loaded test machine is slow

    @app.task(name="t.noop", ignore_result=True)
    def noop() -> None:
        pass

    for _ in range(300):
        noop.delay()
    with prefork_worker(app) as worker:
        wait_until(lambda: len(held) == 300 and not worker.pool.running(), 30, "300 tasks")
    assert max(held) > 1  # queued behind a running one
    assert max(held) <= 1 + prefork_queue.MAX_QUEUED


@pytest.mark.parametrize("guard", ["history", "elapsed"])
def test_nothing_is_queued_behind_a_task_not_known_to_be_short(
    app: App, ledger: Ledger, release: Gate, monkeypatch: pytest.MonkeyPatch, guard: str
) -> None:
    if guard == "history":  # t.long never ran here: its run time is unknown
        monkeypatch.setattr(prefork_queue, "QUEUE_BUDGET", 3600.0)
    else:  # no history needed, but t.long has run for longer than QUEUE_BUDGET
        monkeypatch.setattr(prefork_queue, "HISTORY", 0)
    step = step_task(app, ledger, release)

    @app.task(name="t.long")
    def long() -> str:
        ledger.append("long")
        release.wait()
        return "long done"

    with prefork_worker(app, prefetch_multiplier=8) as worker:
        slow = long.delay()
        ledger.wait_for(1)
        quick = [step.delay(i) for i in range(5)]
        pool: Any = worker.pool
        wait_until(lambda: len(pool._waiting) == 5, 10, "5 requests waiting in the parent")
        assert [r.id for r in worker.pool.running()] == [slow.id]
        release.open()
        assert [r.get(timeout=10) for r in quick] == list(range(5))
        assert slow.get(timeout=10) == "long done"


@pytest.mark.usefixtures("forced")
def test_a_quick_task_running_long_holds_back_at_most_max_queued(
    app: App, ledger: Ledger, release: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefork_queue, "MAX_QUEUED", 2)
    step = step_task(app, ledger, release)
    with prefork_worker(app, concurrency=2, prefetch_multiplier=8) as worker:
        stuck = step.delay(-1, wait=True)
        ledger.wait_for(1)
        quick = [step.delay(i) for i in range(20)]
        # The other child runs all but the ones queued behind the stuck task.
        behind = prefork_queue.MAX_QUEUED
        wait_until(lambda: sum(r.ready() for r in quick) >= 20 - behind, 20, "the rest ran")
        assert len(worker.pool.running()) <= 1 + behind
        release.open()
        assert [r.get(timeout=10) for r in quick] == list(range(20))
        assert stuck.get(timeout=10) == -1


def test_queued_work_stays_under_the_budget(
    app: App, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefork_queue, "HISTORY", 1)
    monkeypatch.setattr(prefork_queue, "QUEUE_BUDGET", 1.2)

    @app.task(name="t.nap")
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    with prefork_worker(app, prefetch_multiplier=8) as worker:
        assert nap.delay(0.5).get(timeout=10) == 0.5  # expected from now on: 0.5 s
        wait_until(lambda: not worker.pool.running(), 10, "its outcome reported")
        results = [nap.delay(0.5) for _ in range(5)]
        pool: Any = worker.pool

        def held() -> tuple[int, int]:
            return len(worker.pool.running()), len(pool._waiting)

        # 0.5 s ahead of the first queued, 1.0 s ahead of the second: a third
        # would wait 1.5 s, past the budget.
        wait_until(lambda: held() == (3, 2), 10, "3 in the child, 2 in the parent")
        time.sleep(0.2)  # not a passing state: the running one takes 0.5 s
        assert held() == (3, 2)
        assert [r.get(timeout=10) for r in results] == [0.5] * 5


@pytest.mark.usefixtures("forced")
def test_a_dead_childs_queued_requests_run_again_uncounted(
    app: App, ledger: Ledger, release: Gate
) -> None:
    @app.task(name="t.die", bind=True)
    def die(self: Any) -> str:
        lost = int(self.request.headers.get(LOST_HEADER) or 0)
        ledger.append(f"die:{lost}")
        if not lost:
            release.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"

    step = step_task(app, ledger, release)
    with prefork_worker(app) as worker:
        first = die.delay()
        queued = [step.delay(i) for i in range(2)]
        wait_until(lambda: len(worker.pool.running()) == 3, 10, "one child holding 3")
        release.open()
        assert [r.get(timeout=15) for r in queued] == [0, 1]
        assert first.get(timeout=15) == "survived"
    # The running one was redelivered with its count; the queued ones ran once, as
    # if for the first time.
    assert sorted(ledger.entries()) == ["0:0", "1:0", "die:0", "die:1"]


@pytest.mark.usefixtures("forced")
def test_warm_shutdown_gives_back_requests_queued_in_a_child(
    app: App, ledger: Ledger, release: Gate
) -> None:
    step = step_task(app, ledger, release)
    with prefork_worker(app) as worker:
        running = step.delay(0, wait=True)
        queued = [step.delay(i) for i in (1, 2)]
        wait_until(lambda: len(worker.pool.running()) == 3, 10, "one child holding 3")
        worker.stop()
        pool: Any = worker.pool
        wait_until(lambda: pool._handing_back, 5, "the worker took the unstarted back")
        release.open()
        assert running.get(timeout=10) == 0
    assert ledger.entries() == ["0:0"]  # 1 and 2 were given back, not run
    with prefork_worker(app):
        assert [r.get(timeout=10) for r in queued] == [1, 2]
    assert sorted(ledger.entries()) == ["0:0", "1:0", "2:0"]


@pytest.mark.usefixtures("forced")
def test_hard_time_limit_of_a_queued_request_counts_from_its_start(
    app: App, ledger: Ledger, release: Gate
) -> None:
    @app.task(name="t.nap")
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    with prefork_worker(app) as worker:
        sent = time.monotonic()
        first = nap.delay(0.5)
        limited = nap.apply_async((30.0,), time_limit=1.0)
        after = nap.delay(0.0)
        wait_until(lambda: len(worker.pool.running()) == 3, 10, "one child holding 3")
        with pytest.raises(TimeLimitExceeded):
            limited.get(timeout=15)
        assert time.monotonic() - sent >= 1.5  # 0.5 s behind the first, then 1 s
        assert first.get(timeout=10) == 0.5  # its child was not killed early
        assert after.get(timeout=10) == 0.0  # dispatched again to the new child
        assert limited.state == states.FAILURE


@pytest.mark.usefixtures("forced")
def test_terminate_of_a_queued_request_stops_it_once_it_starts(
    app: App, ledger: Ledger, release: Gate
) -> None:
    step = step_task(app, ledger, release)

    @app.task(name="t.forever")
    def forever() -> None:
        ledger.append("forever")
        time.sleep(60)

    with prefork_worker(app) as worker:
        first = step.delay(0, wait=True)
        doomed = forever.delay()
        after = step.delay(1)
        wait_until(lambda: len(worker.pool.running()) == 3, 10, "one child holding 3")
        app.control.revoke(doomed.id, terminate=True)
        time.sleep(1.5)  # the control thread looks once a second
        release.open()
        assert first.get(timeout=10) == 0  # its child was not the one signalled
        with pytest.raises(TaskRevokedError, match="terminated by SIGTERM"):
            doomed.get(timeout=10)
        assert after.get(timeout=10) == 1
    assert doomed.state == states.REVOKED


@pytest.mark.usefixtures("forced")
def test_max_tasks_per_child_with_queued_requests(app: App) -> None:
    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    with prefork_worker(app, max_tasks_per_child=2):
        results = [pid.delay() for _ in range(8)]
        pids = [r.get(timeout=15) for r in results]
    assert sorted(collections.Counter(pids).values()) == [2, 2, 2, 2]


@pytest.mark.usefixtures("forced")
def test_a_child_past_max_memory_gives_back_what_it_holds(app: App) -> None:
    hog: list[bytearray] = []

    @app.task(name="t.rss")
    def rss() -> int:
        return rss_kib()

    @app.task(name="t.hog")
    def grow() -> int:
        hog.append(bytearray(64 * 1024 * 1024))  # touched: resident
        time.sleep(0.5)  # the requests below are queued behind it meanwhile
        return os.getpid()

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    with prefork_worker(app):
        baseline = rss.delay().get(timeout=10)
    with prefork_worker(app, max_memory_per_child=baseline + 32 * 1024) as worker:
        big = grow.delay()
        after = [pid.delay() for _ in range(2)]
        wait_until(lambda: len(worker.pool.running()) == 3, 10, "one child holding 3")
        hogger = big.get(timeout=10)
        assert hogger not in [r.get(timeout=10) for r in after]


@pytest.mark.usefixtures("forced")
def test_acks_early_requests_are_never_queued(app: App, ledger: Ledger, release: Gate) -> None:
    step = step_task(app, ledger, release)

    @app.task(name="t.early", acks_late=False)
    def early() -> str:
        return "early"

    with prefork_worker(app) as worker:
        first = step.delay(0, wait=True)
        late = early.delay()
        pool: Any = worker.pool
        wait_until(lambda: len(pool._waiting) == 1, 10, "the early one waiting")
        assert [r.id for r in worker.pool.running()] == [first.id]
        release.open()
        assert late.get(timeout=10) == "early"
        assert first.get(timeout=10) == 0
