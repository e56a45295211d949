"""Countdown and ETA end to end: never early, once, and held by the broker rather
than by worker memory (docs/delayed.md)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from taskq import App
from taskq.broker.base import Envelope
from taskq.broker.envelope import list_key
from taskq.broker.redis import RedisBroker
from taskq.broker.redis import scripts as redis_scripts
from taskq.errors import BrokerError
from taskq.testing import running_worker
from tests import servers
from tests.waiting import wait_until

# Starts workers or subprocesses: the full tier only (scripts/test).
pytestmark = pytest.mark.slow


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
        assert not worker.holding.held  # the broker kept it, not this worker's memory
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


# -- promotion on Redis: the fetch script moves due members of the delayed zset ------


@dataclass
class Store:
    broker: RedisBroker
    raw: redis.Redis
    delayed: str
    unique: str

    def server_now(self) -> float:
        seconds, micros = self.raw.time()
        return seconds + micros / 1e6

    def park(self, n: int, queue: str, eta: float, priority: int = 0) -> None:
        envelope = Envelope(
            body=b"[[], {}, {}]",
            content_type="application/json",
            headers={"id": str(n), "task": "delayed.any"},
            properties={"correlation_id": str(n)},
        )
        self.broker.publish(envelope, queue, priority=priority, eta=eta)

    def promote_all(self) -> None:
        """Fetch from a queue nothing is sent to, so each call only promotes, until
        nothing is due (the broker promotes again at once while its last call left
        some due, else within its 0.5 s period)."""
        deadline = time.monotonic() + 10
        while self.raw.zcount(self.delayed, "-inf", self.server_now()):
            if time.monotonic() > deadline:
                raise AssertionError("due members still in the delayed zset after 10 s")
            self.broker.fetch([f"idle-{self.unique}"], 1, 0.05)

    def drain(self, queue: str) -> list[int]:
        """Every message of the queue's lists, in the order a consumer gets them."""
        got: list[int] = []
        while batch := self.broker.fetch([queue], 500, 0):
            self.broker.ack(batch)
            got += [int(d.envelope.headers["id"]) for d in batch]
        return got


@pytest.fixture
def store(redis_url: str, unique: str) -> Iterator[Store]:
    prefix = f"taskq-test-{unique}:"
    broker = RedisBroker(
        redis_url, consumer_id=f"promoter-{unique}", options={"key_prefix": prefix}
    )
    raw = redis.Redis.from_url(redis_url)
    yield Store(broker, raw, f"{prefix}delayed", unique)
    broker.close()
    keys = list(raw.scan_iter(match=f"*{unique}*", count=1000))
    if keys:
        raw.delete(*keys)
    raw.close()


@pytest.mark.parametrize("via", ["fetch", "promote-script"])
def test_due_members_reach_their_lists_once_in_eta_order(
    store: Store, unique: str, via: str
) -> None:
    first, second = f"pa-{unique}", f"pb-{unique}"
    lists = [(first, 0), (second, 0), (second, 9), (first, 0)]  # first's list gets half
    base = store.server_now() + 3.0  # in the future until all are published
    order = list(range(3000))
    random.Random(4).shuffle(order)  # published out of ETA order
    for n in order:
        queue, priority = lists[n % 4]
        store.park(n, queue, base + n * 1e-4, priority)
    for n in range(3000, 3050):
        store.park(n, first if n % 2 else second, base + 3600)
    wait_until(lambda: store.server_now() > base + 0.31, 10, "every ETA passed")

    if via == "fetch":
        store.promote_all()  # in calls of the broker's promotion limit
    else:
        # One call takes all 3,000: the 1,500 bound for one list go in two LPUSHes.
        promote = store.raw.register_script(redis_scripts.PROMOTE)
        moved, next_due, _, _, errors = promote([store.delayed], [5000])
        assert (moved, errors) == (3000, [])
        assert float(next_due) >= base + 3600 - 0.01

    assert store.raw.zcard(store.delayed) == 50  # the ones not due stay, untouched
    later = store.raw.zrange(store.delayed, 0, -1, withscores=True)
    assert min(score for _, score in later) >= base + 3600 - 0.01
    by_list = {key: [n for n in range(3000) if lists[n % 4] == key] for key in lists}
    assert store.raw.llen(list_key(first, 0)) == 1500
    assert store.raw.llen(list_key(second, 0)) == store.raw.llen(list_key(second, 9)) == 750
    # Each list serves its messages in ETA order; the priority-0 list before priority 9.
    assert store.drain(first) == by_list[(first, 0)]
    assert store.drain(second) == by_list[(second, 0)] + by_list[(second, 9)]


def test_a_list_that_refuses_keeps_its_members_and_the_others_are_promoted(
    store: Store, unique: str
) -> None:
    good, bad = f"pa-{unique}", f"pb-{unique}"
    store.raw.set(list_key(bad, 0), "not a list")
    base = store.server_now() + 1.5
    for n in range(400):
        store.park(n, bad if n % 2 else good, base + n * 1e-4)
    wait_until(lambda: store.server_now() > base + 0.05, 10, "every ETA passed")

    with pytest.raises(BrokerError, match="WRONGTYPE"):
        store.promote_all()
    now = store.server_now()
    store.promote_all()  # nothing due now: the kept members wait a minute

    kept = store.raw.zrange(store.delayed, 0, -1, withscores=True)
    assert len(kept) == 200
    assert all(now + 50 < score < now + 70 for _, score in kept)  # retried in a minute
    assert store.drain(good) == list(range(0, 400, 2))

    # Once the key is a list again, the kept members arrive when next due, once each.
    store.raw.delete(list_key(bad, 0))
    store.raw.zadd(store.delayed, {member: 0 for member, _ in kept})
    store.promote_all()
    assert sorted(store.drain(bad)) == list(range(1, 400, 2))
    assert store.raw.zcard(store.delayed) == 0
