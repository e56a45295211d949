"""The asyncio pool: many coroutines at once on one loop, limits, terminate."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from taskq import App, states
from taskq.errors import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from taskq.testing import running_worker
from taskq.worker.options import WorkerOptions
from taskq.worker.worker import Worker
from tests.waiting import wait_until


def test_a_hundred_sleeping_coroutines_run_at_once(app: App) -> None:
    @app.task(name="t.nap")
    async def nap(i: int) -> int:
        await asyncio.sleep(0.5)
        return i

    with running_worker(app, pool="asyncio", concurrency=100):
        start = time.monotonic()
        results = [nap.delay(i) for i in range(100)]
        assert [r.get(timeout=30) for r in results] == list(range(100))
        elapsed = time.monotonic() - start
    assert elapsed < 15, f"100 x 0.5 s took {elapsed:.1f}s: they did not overlap"


def test_plain_functions_run_in_threads_beside_the_loop(app: App) -> None:
    @app.task(name="t.blocking")
    def blocking() -> int:
        time.sleep(0.2)
        return os.getpid()

    with running_worker(app, pool="asyncio", concurrency=4):
        assert {r.get(timeout=10) for r in [blocking.delay() for _ in range(4)]} == {os.getpid()}


def test_default_concurrency_is_a_hundred_for_asyncio_and_cpus_otherwise(app: App) -> None:
    assert Worker(app, WorkerOptions(pool="asyncio")).pool.concurrency == 100
    assert Worker(app, WorkerOptions(pool="threads")).pool.concurrency == (os.cpu_count() or 1)


def test_limits_cancel_the_coroutine(app: App) -> None:
    cleaned: list[str] = []

    @app.task(name="t.soft", soft_time_limit=0.2)
    async def soft() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("soft")

    @app.task(name="t.stubborn", soft_time_limit=0.2, time_limit=0.5)
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(10)  # ignores the soft limit; the hard one ends it
        return "not reached"

    with running_worker(app, pool="asyncio", concurrency=4):
        with pytest.raises(SoftTimeLimitExceeded):
            soft.delay().get(timeout=10)
        with pytest.raises(TimeLimitExceeded):
            stubborn.delay().get(timeout=10)
    assert cleaned == ["soft"]


def test_revoke_with_terminate_cancels_a_running_coroutine(app: App) -> None:
    running: list[bool] = []

    @app.task(name="t.forever")
    async def forever() -> None:
        running.append(True)
        await asyncio.sleep(60)

    with running_worker(app, pool="asyncio", concurrency=4):
        result = forever.delay()
        wait_until(lambda: running, 10, "the task to start")
        app.control.revoke(result.id, terminate=True)
        with pytest.raises(TaskRevokedError, match="terminated"):
            result.get(timeout=10)
        assert result.state == states.REVOKED
