"""Countdown and ETA end to end: never early, once, and held by the broker rather
than by worker memory (docs/delayed.md)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from taskq import App
from taskq.testing import running_worker
from tests import servers
from tests.waiting import wait_until

BROKERS = ["redis", "sqlite", "amqp"]


def make_app(broker: str, unique: str, tmp_path: Path, **settings: object) -> App:
    settings.setdefault("task_default_queue", f"q-{unique}")
    if broker == "sqlite":
        url = f"sqlite:///{tmp_path / 'taskq.sqlite3'}"
        return App("delayed", broker=url, backend=url, **settings)
    servers.require("redis")
    if broker == "redis":
        options = {"key_prefix": f"taskq-test-{unique}:"}
        return App(
            "delayed",
            broker=servers.REDIS_URL,
            backend=servers.REDIS_URL,
            broker_transport_options=options,
            **settings,
        )
    servers.require("amqp")
    return App("delayed", broker=servers.AMQP_URL, backend=servers.REDIS_URL, **settings)


class Ledger:
    """Every execution, with its start time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[str, float]] = []

    def record(self, key: str) -> float:
        now = time.time()
        with self.lock:
            self.runs.append((key, now))
        return now


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    yield Ledger()


@pytest.mark.parametrize("broker", BROKERS)
def test_countdown_runs_after_it_and_the_worker_holds_nothing(
    broker: str, unique: str, tmp_path: Path, ledger: Ledger
) -> None:
    app = make_app(broker, unique, tmp_path)

    @app.task(name="delayed.stamp")
    def stamp() -> float:
        return ledger.record("stamp")

    with running_worker(app) as worker:
        sent = time.time()
        result = stamp.apply_async(countdown=2)
        assert worker.broker.supports_delayed
        started = result.get(timeout=15)
        assert started >= sent + 2.0
        assert not worker._held  # the broker kept it, not this worker's memory
    assert len(ledger.runs) == 1
    app.close()


@pytest.mark.parametrize("broker", ["redis", "sqlite"])
def test_eta_longer_than_the_lease_runs_once_never_early(
    broker: str, unique: str, tmp_path: Path, ledger: Ledger
) -> None:
    app = make_app(broker, unique, tmp_path, worker_lease_timeout=1.0)

    @app.task(name="delayed.once")
    def once() -> float:
        return ledger.record("once")

    with running_worker(app):
        sent = time.time()
        result = once.apply_async(countdown=3.5)
        started = result.get(timeout=20)
        # Let several more leases go by: a redelivery would show in the ledger.
        deadline = time.time() + 2.5
        wait_until(lambda: time.time() >= deadline, 5, "three more leases")
    assert started >= sent + 3.5
    assert [key for key, _ in ledger.runs] == ["once"]
    app.close()


def test_ten_thousand_delayed_tasks_promoted_by_three_workers_run_once(
    unique: str, tmp_path: Path, ledger: Ledger
) -> None:
    app = make_app("redis", unique, tmp_path, task_ignore_result=True)

    @app.task(name="delayed.mark")
    def mark(n: int) -> None:
        ledger.record(str(n))

    eta_sent = time.time()
    for n in range(10_000):
        mark.apply_async((n,), countdown=1)
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(running_worker(app, concurrency=2))
        wait_until(lambda: len(ledger.runs) >= 10_000, 120, "10,000 runs")
        # Give duplicates, if any, a moment to show up before counting.
        settle = time.time() + 1.0
        wait_until(lambda: time.time() >= settle, 5, "settling")
    counts = Counter(key for key, _ in ledger.runs)
    assert len(counts) == 10_000
    assert max(counts.values()) == 1
    assert min(at for _, at in ledger.runs) >= eta_sent + 1.0
    app.close()
