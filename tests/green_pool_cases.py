"""The gevent and eventlet pools inside a patched process: many waits and many
publishes at once, time limits, terminate, rate limits, ETA, retries, prefetch,
shutdown, tasks that raise.

Not collected by a plain pytest run (the name does not start with ``test_``):
tests/test_worker_green.py runs this file under ``tests/green_run.py``, in a
process patched for each pool before anything is imported, as ``taskq worker -P
gevent`` is. Run by hand: ``python -m tests.green_run gevent tests/green_pool_cases.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis

from taskq import App, SoftTimeLimitExceeded, TimeLimitExceeded, monkey, states
from taskq.errors import TaskRevokedError
from taskq.testing import running_worker
from taskq.worker.options import WorkerOptions
from taskq.worker.worker import Worker
from tests import servers
from tests.waiting import wait_until
from tests.worker_support import Gate, Ledger

POOL = monkey.green()
pytestmark = pytest.mark.skipif(POOL is None, reason="run it with tests/green_run.py")


def test_hundreds_of_tasks_wait_on_redis_at_once(app: App, ledger: Ledger, unique: str) -> None:
    """Each task blocks in BLPOP until the test pushes a token, which it does only
    once all have started: it passes only if redis-py's socket waits yield."""
    count = 300
    key = f"taskq-test-{unique}:tokens"
    # redis-py's default pool raises past 100 connections; a blocking pool waits.
    pool = redis.BlockingConnectionPool.from_url(servers.REDIS_URL, max_connections=count + 10)
    client = redis.Redis(connection_pool=pool)

    @app.task(name="green.wait")
    def wait(i: int) -> int:
        client.rpush(ledger.key, i)
        assert client.blpop([key], timeout=30) is not None, "no token within 30 s"
        return i

    try:
        with running_worker(app, pool=POOL, concurrency=count):
            results = [wait.delay(i) for i in range(count)]
            ledger.wait_for(count, timeout=30)
            client.rpush(key, *range(count))
            assert sorted(r.get(timeout=30) for r in results) == list(range(count))
    finally:
        client.delete(key)
        client.close()


def test_hundreds_of_tasks_publish_at_once(app: App, ledger: Ledger, unique: str) -> None:
    """All wait until every one has started, then each sends a child task at the
    same moment: taskq's producer serves hundreds of greenlets at once."""
    count = 300
    key = f"taskq-test-{unique}:go"
    pool = redis.BlockingConnectionPool.from_url(servers.REDIS_URL, max_connections=count + 10)
    client = redis.Redis(connection_pool=pool)

    @app.task(name="green.child")
    def child(i: int) -> int:
        return i

    @app.task(name="green.parent")
    def parent(i: int) -> str:
        client.rpush(ledger.key, i)
        assert client.blpop([key], timeout=30) is not None, "no token within 30 s"
        return child.delay(i).id

    try:
        with running_worker(app, pool=POOL, concurrency=count):
            results = [parent.delay(i) for i in range(count)]
            ledger.wait_for(count, timeout=30)
            client.rpush(key, *range(count))
            children = [app.AsyncResult(r.get(timeout=30)) for r in results]
            assert sorted(c.get(timeout=30) for c in children) == list(range(count))
    finally:
        client.delete(key)
        client.close()


def test_soft_limit_is_raised_in_the_task_and_others_go_on(app: App, release: Gate) -> None:
    @app.task(name="green.polite")
    def polite() -> str:
        try:
            time.sleep(30)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "slept"

    @app.task(name="green.bystander")
    def bystander() -> str:
        release.wait()
        return "finished"

    with running_worker(app, pool=POOL, concurrency=4):
        other = bystander.delay()
        assert polite.apply_async(soft_time_limit=0.3).get(timeout=10) == "cleaned up"
        release.open()
        assert other.get(timeout=10) == "finished"


def test_hard_limit_stops_a_task_that_yields(app: App) -> None:
    @app.task(name="green.stubborn")
    def stubborn() -> str:
        while True:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                continue  # ignores the soft limit: only the hard one ends it

    with running_worker(app, pool=POOL, concurrency=2):
        result = stubborn.apply_async(soft_time_limit=0.2, time_limit=0.5)
        with pytest.raises(TimeLimitExceeded, match=r"time limit \(0.5s\) exceeded"):
            result.get(timeout=10)
        assert result.state == states.FAILURE


def test_hard_limit_cannot_stop_a_task_that_never_yields_and_says_so(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "taskq.worker")

    @app.task(name="green.compute")
    def compute(seconds: float) -> str:
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # pure Python: never yields to the loop
            pass
        return "done"

    with running_worker(app, pool=POOL, concurrency=2):
        assert compute.apply_async((0.8,), time_limit=0.3).get(timeout=10) == "done"
    assert "past its hard time limit (0.3s), without yielding" in caplog.text


def test_terminate_stops_one_task_only(app: App, ledger: Ledger, release: Gate) -> None:
    @app.task(name="green.gated")
    def gated(name: str) -> str:
        ledger.append(name)
        release.wait()
        return name

    with running_worker(app, pool=POOL, concurrency=4, shutdown_timeout=5):
        victim, bystander = gated.delay("victim"), gated.delay("bystander")
        ledger.wait_for(2)
        app.control.revoke(victim.id, terminate=True)
        with pytest.raises(TaskRevokedError):
            victim.get(timeout=10)
        assert victim.state == states.REVOKED
        release.open()
        assert bystander.get(timeout=10) == "bystander"
    assert sorted(ledger.entries()) == ["bystander", "victim"]  # not redelivered


def test_rate_limit_spaces_one_task_and_delays_no_other(app: App) -> None:
    starts: list[float] = []

    @app.task(name="green.limited", rate_limit="10/s")
    def limited() -> None:
        starts.append(time.monotonic())

    @app.task(name="green.free")
    def free() -> float:
        return time.monotonic()

    with running_worker(app, pool=POOL, concurrency=4):
        results = [limited.delay() for _ in range(11)]
        free_ran_at = free.delay().get(timeout=10)
        for result in results:
            result.get(timeout=10)
    starts.sort()
    assert starts[-1] - starts[0] >= 0.9, "11 starts at 10/s need 1 s"
    assert free_ran_at < starts[-1], "the unlimited task waited for the limited ones"


def test_eta_runs_no_earlier_than_asked(app: App) -> None:
    @app.task(name="green.when")
    def when() -> float:
        return time.time()

    with running_worker(app, pool=POOL, concurrency=2):
        sent = time.time()
        assert when.apply_async(countdown=0.5).get(timeout=10) >= sent + 0.5


def test_retry_runs_again_in_a_greenlet(app: App, ledger: Ledger) -> None:
    @app.task(name="green.flaky", bind=True, max_retries=2)
    def flaky(self: Any) -> int:
        ledger.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=0.1)
        return int(self.request.retries)

    with running_worker(app, pool=POOL, concurrency=2):
        assert flaky.delay().get(timeout=10) == 2
    assert ledger.entries() == ["0", "1", "2"]


def test_prefetch_is_bounded_by_concurrency(app: App, ledger: Ledger, release: Gate) -> None:
    @app.task(name="green.held")
    def held(i: int) -> int:
        ledger.append(i)
        release.wait()
        return i

    results = [held.delay(i) for i in range(10)]
    probe = app.new_broker(f"probe-{POOL}")
    try:
        with running_worker(app, pool=POOL, concurrency=3, prefetch_multiplier=1):
            ledger.wait_for(3)
            left = probe.fetch([app.conf.task_default_queue], 10, 1.0)
            assert len(left) == 7, "the worker leased more than its concurrency"
            probe.requeue(left)
            release.open()
            assert sorted(r.get(timeout=10) for r in results) == list(range(10))
    finally:
        probe.close()


def test_tasks_raising_base_exceptions_fail_and_the_worker_goes_on(app: App) -> None:
    from greenlet import GreenletExit

    @app.task(name="green.exits")
    def exits() -> None:
        raise SystemExit(3)

    @app.task(name="green.greenlet_exit")
    def greenlet_exit() -> None:
        raise GreenletExit()

    @app.task(name="green.add")
    def add(x: int, y: int) -> int:
        return x + y

    with running_worker(app, pool=POOL, concurrency=2):
        for task in (exits, greenlet_exit):
            result = task.delay()
            wait_until(lambda r=result: r.state == states.FAILURE, 10, f"{task.name} FAILURE")
        assert add.delay(1, 1).get(timeout=10) == 2


def _worker(app: App, concurrency: int) -> tuple[Worker, threading.Thread]:
    worker = Worker(app, WorkerOptions(pool=POOL, concurrency=concurrency, shutdown_timeout=20))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    return worker, thread


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_shutdown_hands_back_unstarted_at_once(
    app: App, unique: str, ledger: Ledger, release: Gate, cold: bool
) -> None:
    """Warm: running tasks finish, the unstarted are back in the queue while they
    still run. Cold: the running ones are given back too, unfinished."""
    done = Ledger(unique, "done")

    @app.task(name="green.slow")
    def slow(i: int) -> int:
        ledger.append(i)
        release.wait()
        done.append(i)
        return i

    for i in range(6):
        slow.delay(i)
    worker, thread = _worker(app, concurrency=2)
    probe = app.new_broker(f"probe-{POOL}")
    try:
        ledger.wait_for(2)
        worker.stop(cold=cold)
        queue = app.conf.task_default_queue
        back: list[Any] = []
        wait_until(lambda: back.extend(probe.fetch([queue], 10, 0.1)) or len(back) >= 4, 10)
        if not cold:
            assert len(back) == 4 and done.entries() == [], "unstarted not back at once"
            release.open()
        thread.join(25)
        assert not thread.is_alive()
        if cold:
            back += probe.fetch([queue], 10, 1.0)
            assert len(back) == 6 and done.entries() == []
        else:
            assert sorted(done.entries()) == sorted(ledger.entries()[:2])
        probe.requeue(back)
    finally:
        probe.close()
        done.delete()


def test_remote_control_and_task_events_on_a_green_worker(
    app: App, unique: str, release: Gate
) -> None:
    """The worker's control and event threads are greenlets here: ping, inspect a
    running task, grow the pool, and read the task's events, as on any pool."""
    from taskq.events import EventReceiver, connect

    seen: list[dict[str, Any]] = []

    @app.task(name="green.held")
    def held() -> str:
        release.wait(30)
        return "done"

    receiver = EventReceiver(
        lambda: connect(servers.REDIS_URL, connect_timeout=4.0, what="Events"), seen.append
    )
    stop = threading.Event()
    listening = threading.Thread(target=receiver.run, args=(stop, 0.1), daemon=True)
    listening.start()
    name = f"{POOL}-{unique}@x"
    options = {"pool": POOL, "concurrency": 2, "hostname": name, "task_events": True}
    try:
        assert receiver.ready.wait(10)
        with running_worker(app, **options) as worker:
            assert worker.remote is not None and worker.remote.ready.wait(10)
            assert app.control.ping(destination=[name], timeout=5) == [{name: {"ok": "pong"}}]
            result = held.delay()
            inspect = app.control.inspect(destination=[name], timeout=5)
            wait_until(lambda: (inspect.active() or {}).get(name), 10, "the task listed active")
            grown = app.control.pool_grow(3, destination=[name], reply=True, timeout=5)
            assert grown == [{name: {"ok": "pool will grow to 5"}}]
            release.open()
            assert result.get(timeout=10) == "done"
            wait_until(
                lambda: any(
                    e.get("type") == "task-succeeded" and e.get("uuid") == result.id for e in seen
                ),  # fmt: skip
                10,
                "task-succeeded seen",
            )
    finally:
        stop.set()
        listening.join(5)
