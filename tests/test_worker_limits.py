"""Rate limits and time limits outside the prefork pool (prefork has its own file)."""

from __future__ import annotations

import threading
import time

import pytest

from taskq import App, ConfigurationError
from taskq.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from taskq.message import TaskMessage
from taskq.testing import run_until_empty, running_worker, test_app
from taskq.worker.options import WorkerOptions
from taskq.worker.policy import Policy
from taskq.worker.ratelimit import RateLimiter, parse_rate
from taskq.worker.worker import Worker
from tests.worker_support import redis_app

# -- rate limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("10/s", 10.0),
        ("120/m", 2.0),
        ("3600/h", 1.0),
        ("5", 5.0),
        (7, 7.0),
        ("0/s", None),
        (None, None),
    ],
)
def test_parse_rate(text: str | int | None, per_second: float | None) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["ten/s", "10/d", "-1/s"])
def test_parse_rate_rejects_nonsense(text: str) -> None:
    with pytest.raises(ConfigurationError, match="rate limit"):
        parse_rate(text)


def test_token_bucket_spaces_starts_evenly() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.reserve("a", 10.0) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    assert limiter.reserve("b", 10.0) == 0.0  # per task name
    now[0] += 5.0
    assert limiter.reserve("a", 10.0) == 0.0  # no burst saved up beyond one token


def test_bad_rate_limit_stops_the_worker_at_start() -> None:
    app = test_app()
    app.task(name="t.bad", rate_limit="fast")(lambda: None)
    with pytest.raises(ConfigurationError, match="'t.bad'"):
        Worker(app, WorkerOptions(pool="threads"))


def test_rate_limit_spaces_one_task_and_delays_no_other(app: App) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    @app.task(name="t.limited", rate_limit="10/s")
    def limited() -> None:
        with lock:
            starts.append(time.monotonic())

    @app.task(name="t.free")
    def free() -> float:
        return time.monotonic()

    with running_worker(app, pool="threads", concurrency=4):
        results = [limited.delay() for _ in range(11)]
        unlimited = free.delay()
        free_ran_at = unlimited.get(timeout=10)
        for result in results:
            result.get(timeout=10)
    starts.sort()
    span = starts[-1] - starts[0]
    # 11 starts at 10/s need at least 1 s; some slack for the clock of the dispatch.
    assert span >= 0.9, f"11 starts in {span:.2f}s: faster than 10/s"
    assert free_ran_at < starts[-1], "the unlimited task waited for the limited ones"


def test_default_rate_limit_applies_to_tasks_without_their_own(unique: str) -> None:
    app = redis_app(unique, task_default_rate_limit="20/s")
    starts: list[float] = []

    @app.task(name="t.plain")
    def plain() -> None:
        starts.append(time.monotonic())

    @app.task(name="t.own", rate_limit="1000/s")
    def own() -> None:
        pass

    for _ in range(5):
        plain.delay()
    run_until_empty(app)
    assert starts[-1] - starts[0] >= 0.18  # 5 starts at 20/s: at least 0.2 s
    app.close()


# -- time limits ----------------------------------------------------------------------


def test_limits_precedence_message_then_task_then_worker_then_setting() -> None:
    app = test_app(task_time_limit=40.0, task_soft_time_limit=30.0)
    task = app.task(name="t.x", time_limit=20.0)(lambda: None)
    message = TaskMessage(id="1", task="t.x", time_limit=10.0)
    plain = TaskMessage(id="1", task="t.x")
    assert Policy.resolve(task, app.conf, 25.0, 35.0).limits_for(message) == (25.0, 10.0)
    assert Policy.resolve(task, app.conf).limits_for(plain) == (30.0, 20.0)
    assert Policy.resolve(None, app.conf, None, 35.0).limits_for(plain) == (30.0, 35.0)


def test_threads_pool_raises_limits_in_the_task_thread(app: App) -> None:
    @app.task(name="t.soft", soft_time_limit=0.2)
    def soft() -> str:
        try:
            for _ in range(500):  # a thread sees the limit between Python calls
                time.sleep(0.01)
        except SoftTimeLimitExceeded as exc:
            return str(exc)
        return "not interrupted"

    @app.task(name="t.hard", time_limit=0.2)
    def hard() -> None:
        for _ in range(500):
            time.sleep(0.01)

    with running_worker(app, pool="threads", concurrency=2):
        assert soft.delay().get(timeout=10) == "soft time limit (0.2s) exceeded"
        with pytest.raises(TimeLimitExceeded, match=r"time limit \(0.2s\) exceeded"):
            hard.delay().get(timeout=10)


def test_solo_in_the_main_thread_interrupts_a_blocking_call(app: App) -> None:
    @app.task(name="t.sleepy", soft_time_limit=0.2)
    def sleepy() -> str:
        try:
            time.sleep(30)  # SIGALRM interrupts it; no Python code runs meanwhile
        except SoftTimeLimitExceeded:
            return "interrupted"
        return "slept"

    result = sleepy.delay()
    assert threading.current_thread() is threading.main_thread()
    run_until_empty(app, pool="solo")
    assert result.get(timeout=5) == "interrupted"
