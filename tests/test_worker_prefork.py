"""The prefork pool against real Redis: lost children, recycling, time limits,
fair dispatch, autoscale, acks. Children are forked from this process, so the
``multiprocessing`` objects below are shared with them."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from taskq import App, states
from taskq.errors import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from taskq.testing import running_worker
from taskq.worker.pools.prefork import pool as prefork
from taskq.worker.pools.prefork.child import rss_kib
from tests.waiting import wait_until
from tests.worker_support import Gate, Ledger


def prefork_worker(app: App, concurrency: int = 2, **options: Any) -> Any:
    options.setdefault("shutdown_timeout", 5.0)
    return running_worker(app, pool="prefork", concurrency=concurrency, **options)


def test_killed_child_is_replaced_and_its_task_redelivered(app: App, ledger: Ledger) -> None:
    @app.task(name="t.victim")
    def victim() -> int:
        ledger.append(os.getpid())
        if len(ledger.entries()) == 1:
            time.sleep(30)  # the first run waits to be killed
        return os.getpid()

    with prefork_worker(app) as worker:
        result = victim.delay()
        first = int(ledger.wait_for(1)[0])
        os.kill(first, signal.SIGKILL)
        assert result.get(timeout=15) != first
        wait_until(lambda: len(worker.pool.pids()) == 2, 10, "two children")
        assert first not in worker.pool.pids()
    assert len(ledger.entries()) == 2


def test_acks_early_task_of_a_killed_child_is_not_redelivered(app: App, ledger: Ledger) -> None:
    @app.task(name="t.early", acks_late=False)
    def early() -> None:
        ledger.append(os.getpid())
        time.sleep(30)

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    with prefork_worker(app, concurrency=1) as worker:
        result = early.delay()
        os.kill(int(ledger.wait_for(1)[0]), signal.SIGKILL)
        with pytest.raises(WorkerLostError):
            result.get(timeout=10)
        assert add.delay(1, 2).get(timeout=10) == 3  # ran after any redelivery would have
        assert len(worker.pool.pids()) == 1
    assert len(ledger.entries()) == 1


def test_max_tasks_per_child_recycles_children(app: App) -> None:
    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    with prefork_worker(app, concurrency=1, max_tasks_per_child=2):
        pids = [pid.delay().get(timeout=10) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_max_memory_per_child_recycles_after_the_task(app: App) -> None:
    hog: list[bytearray] = []

    @app.task(name="t.rss")
    def rss() -> int:
        return rss_kib()

    @app.task(name="t.hog")
    def grow() -> int:
        hog.append(bytearray(64 * 1024 * 1024))  # touched: resident
        return os.getpid()

    # A fresh child's resident size (smaller than this process's: fork shares pages).
    with prefork_worker(app, concurrency=1):
        baseline = rss.delay().get(timeout=10)
    with prefork_worker(app, concurrency=1, max_memory_per_child=baseline + 32 * 1024):
        first = grow.delay().get(timeout=10)
        assert grow.delay().get(timeout=10) != first


def test_hard_time_limit_kills_fails_and_keeps_the_pool_size(app: App, ledger: Ledger) -> None:
    @app.task(name="t.stuck", time_limit=0.5)
    def stuck() -> None:
        ledger.append(os.getpid())
        time.sleep(30)

    @app.task(name="t.slow")
    def slow() -> None:
        time.sleep(30)

    with prefork_worker(app, time_limit=20.0) as worker:
        result = stuck.delay()
        per_call = slow.apply_async(time_limit=0.5)  # the message's limit wins
        with pytest.raises(TimeLimitExceeded, match=r"time limit \(0.5s\)"):
            result.get(timeout=10)
        with pytest.raises(TimeLimitExceeded):
            per_call.get(timeout=10)
        assert result.state == states.FAILURE
        killed = int(ledger.entries()[0])
        wait_until(lambda: len(worker.pool.pids()) == 2, 10, "two children")
        assert killed not in worker.pool.pids()
    assert len(ledger.entries()) == 1  # acked, not redelivered


def test_soft_time_limit_is_catchable_in_the_task(app: App) -> None:
    @app.task(name="t.soft", soft_time_limit=0.3)
    def soft() -> str:
        try:
            time.sleep(10)
        except SoftTimeLimitExceeded as exc:
            return f"cleaned up: {exc}"
        return "not interrupted"

    with prefork_worker(app):
        assert soft.delay().get(timeout=10) == "cleaned up: soft time limit (0.3s) exceeded"


def test_short_tasks_never_wait_behind_a_long_one(release: Gate, app: App) -> None:

    @app.task(name="t.long")
    def long() -> str:
        release.wait()
        return "long done"

    @app.task(name="t.short")
    def short(i: int) -> int:
        return i

    with prefork_worker(app, concurrency=2):
        slow = long.delay()
        quick = [short.delay(i) for i in range(20)]
        try:
            assert [r.get(timeout=20) for r in quick] == list(range(20))
            assert not slow.ready()
        finally:
            release.open()
        assert slow.get(timeout=10) == "long done"


def test_autoscale_grows_with_load_and_shrinks_when_idle(
    release: Gate, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefork, "AUTOSCALE_KEEPALIVE", 0.2)

    @app.task(name="t.block")
    def block() -> None:
        release.wait()

    with prefork_worker(app, autoscale=(3, 1)) as worker:
        assert len(worker.pool.pids()) == 1
        results = [block.delay() for _ in range(3)]
        wait_until(lambda: len(worker.pool.pids()) == 3, 10, "grew to 3")
        release.open()
        for result in results:
            result.get(timeout=10)
        wait_until(lambda: len(worker.pool.pids()) == 1, 10, "shrank to 1")
