"""The prefork pool on Redis: children fetch and settle under leases of their own,
and the parent settles what a child held when it dies, at once rather than when the
child's lease runs out. The guarantees the dispatching pool gives (time limits,
terminate, recycling, autoscale) are in tests/test_worker_prefork.py, which runs on
this pool too."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskq import App
from taskq.message import LOST_HEADER
from taskq.testing import run_until_empty, running_worker
from taskq.worker.policy import Policies
from taskq.worker.pools.prefork.board import Board, Running
from taskq.worker.pools.prefork.consuming import ConsumingPool
from tests import servers
from tests.waiting import wait_until
from tests.worker_support import Gate, Ledger, redis_app


@pytest.fixture
def app(unique: str) -> Iterator[App]:
    """A lease far longer than any wait below: what comes back came back because
    the parent gave it back, not because a lease ran out."""
    app = redis_app(unique, worker_lease_timeout=600.0)
    yield app
    app.close()


def consumers(unique: str) -> list[str]:
    client = redis.Redis.from_url(servers.REDIS_URL)
    try:
        return [m.decode() for m in client.zrange(f"taskq-test-{unique}:consumers", 0, -1)]
    finally:
        client.close()


def test_each_child_consumes_under_a_lease_of_its_own(app: App, unique: str) -> None:
    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    with running_worker(app, pool="prefork", concurrency=2, shutdown_timeout=5) as worker:
        assert isinstance(worker.pool, ConsumingPool)
        assert pid.delay().get(timeout=10) in worker.pool.pids()
        wait_until(lambda: len(consumers(unique)) >= 2, 10, "a lease per child")
        children = set(consumers(unique))
    # The parent forgets each child as it exits, at once (what is left is at most the
    # parent's own lease, which runs out as any worker's does).
    assert len(children & set(consumers(unique))) <= 1


def test_a_killed_childs_task_comes_back_counted_at_once(
    app: App, ledger: Ledger, release: Gate
) -> None:
    @app.task(name="t.die", bind=True)
    def die(self: Any) -> str:
        lost = int(self.request.headers.get(LOST_HEADER) or 0)
        ledger.append(f"{os.getpid()}:{lost}")
        if not lost:
            release.wait()
        return f"survived {lost}"

    with running_worker(app, pool="prefork", concurrency=1, shutdown_timeout=5) as worker:
        result = die.delay()
        victim = int(ledger.wait_for(1)[0].split(":")[0])
        os.kill(victim, signal.SIGKILL)
        # Redelivered with its count (the poison guard), long before the lease ends.
        assert result.get(timeout=15) == "survived 1"
        wait_until(lambda: victim not in worker.pool.pids(), 10, "child replaced")
        assert len(worker.pool.pids()) == 1


def test_warm_shutdown_lets_the_running_task_finish(
    app: App, ledger: Ledger, release: Gate
) -> None:
    @app.task(name="t.wait")
    def wait(i: int) -> int:
        ledger.append(str(i))
        release.wait()
        return i

    with running_worker(app, pool="prefork", concurrency=1, shutdown_timeout=10) as worker:
        running = wait.delay(0)
        ledger.wait_for(1)
        queued = wait.delay(1)
        worker.stop()
        release.open()
        assert running.get(timeout=10) == 0
    assert ledger.entries() == ["0"]  # the one waiting in the queue was not taken
    with running_worker(app, pool="prefork", concurrency=1, shutdown_timeout=10):
        assert queued.get(timeout=10) == 1


def test_rate_limits_are_split_between_the_children(app: App) -> None:
    @app.task(name="t.limited", rate_limit="10/s")
    def limited() -> None:
        pass

    parent = Policies(app.tasks, app.conf)
    parent.resolve_all()
    child = Policies(app.tasks, app.conf)
    child.inherit(parent, 4)
    assert child["t.limited"].rate == pytest.approx(parent["t.limited"].rate / 4)
    child.set_rate_limit("t.limited", "20/s")
    assert child["t.limited"].rate == pytest.approx(5.0)


def test_a_board_shows_the_running_task_and_its_message() -> None:
    board = Board()
    board.set_lease("lease-1")
    assert board.read() == ("lease-1", 0, 0, None)
    board.begin("tag.1", "id-1", "t.name", 12.5, True, "q", b"payload")
    lease, _, _, running = board.read()
    assert lease == "lease-1"
    assert running == Running(
        "tag.1", "id-1", "t.name", running.started, 12.5, True, "q", b"payload"
    )
    board.end(3)
    assert board.read() == ("lease-1", 3, 1, None)
    board.begin("tag.2", "id-2", "t.name", 0.0, False, "q", b"x" * 70_000)
    running = board.read()[3]
    assert running is not None and running.payload is None  # too big: read from the lease
    board.close()


def test_a_burst_run_ends_once_the_queue_and_the_children_are_empty(
    app: App, ledger: Ledger
) -> None:
    @app.task(name="t.note")
    def note(i: int) -> None:
        ledger.append(str(i))

    note.delay_many([(i,) for i in range(50)])
    run_until_empty(app, pool="prefork", concurrency=2)
    assert sorted(map(int, ledger.entries())) == list(range(50))
