"""The broker itself fails under load: Redis killed and restarted (5), RabbitMQ
closing the connections (6), Redis frozen during a producer burst (11).

A producer thread publishes while workers consume; the ids whose publish
returned are the promise. A publish that raised is *uncertain* (the broker may
have taken it before the error): it may run or not.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from taskq import App
from taskq.errors import BrokerError
from tests import servers
from tests.faults.cluster import (
    AMQP_URL,
    amqp_waiting,
    delete_amqp,
    start_worker,
    stop_all,
    wait_settled,
)
from tests.faults.faultproj import Config
from tests.faults.ledger import Checker, Event, Ledger
from tests.faults.redis_server import PrivateRedis
from tests.proc import Proc

Producer = Callable[[Config], App]
MakeConfig = Callable[..., Config]


class Publisher(threading.Thread):
    """Publishes ``faults.work`` tasks until ``target`` have gone through (or ``stop``),
    at most one every ``pace`` seconds."""

    def __init__(self, app: App, prefix: str, target: int, pace: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.app, self.prefix, self.target, self.pace = app, prefix, target, pace
        self.published: dict[str, float] = {}  # id -> when its publish began
        self.uncertain: list[str] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while len(self.published) < self.target and not self.stop.is_set():
            task_id = f"{self.prefix}-{n}"
            n += 1
            started, began = time.monotonic(), time.time()
            try:
                self.app.send_task("faults.work", kwargs={"seconds": 0.02}, task_id=task_id)
            except BrokerError as exc:
                self.uncertain.append(task_id)
                self.errors.append(str(exc))
                self.stop.wait(0.05)
                continue
            self.latencies.append(time.monotonic() - started)
            self.published[task_id] = began
            if self.pace:
                self.stop.wait(self.pace)

    def wait_published(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.published) < count:
            assert self.is_alive() and time.monotonic() < deadline, "producer stalled"
            time.sleep(0.01)


def resume_times(
    events: list[Event], publisher: Publisher, pids: list[int], since: float
) -> dict[int, float]:
    """Per worker pid: seconds from ``since`` to its first start of a task that was
    published after ``since`` (so fetched after the fault)."""
    # A copy (one C call, atomic under the GIL): the publisher thread adds meanwhile.
    fresh = {i for i, t in publisher.published.copy().items() if t > since}
    first: dict[int, float] = {}
    for e in events:
        if e.event == "start" and e.id in fresh and e.pid in pids and e.pid not in first:
            first[e.pid] = e.t - since
    return first


def first_error_at(worker: Proc, text: str = "Broker connection error") -> float:
    """The log time (unix time) of the worker's first line containing ``text``."""
    deadline = time.monotonic() + 10
    while True:
        for line in worker.output.splitlines():
            if text in line:
                stamp = line[1 : line.index(": ")]  # "[2026-01-01 10:00:00,123: ERROR/..."
                return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        assert time.monotonic() < deadline, f"no {text!r} in the worker's output"
        time.sleep(0.05)


def wait_resumed(
    ledger: Ledger, publisher: Publisher, pids: list[int], since: float, timeout: float
) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    while True:
        found = resume_times(ledger.events(), publisher, pids, since)
        if len(found) == len(pids):
            return found
        assert time.monotonic() < deadline, f"workers {set(pids) - set(found)} did not resume"
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_5_redis_killed_and_restarted_under_load(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    config = make_config(broker_redis.url, lease=10.0)
    pool = [start_worker(config, "-P", "threads", "-c", "4") for _ in range(2)]
    # Paced, and stopped once both workers resumed: a worker still backing off
    # (up to a few seconds) must find fresh work when it comes back, not a queue the
    # other worker drained (taskq drains a fixed 400 faster than that).
    publisher = Publisher(producer(config), f"s5-{unique}", target=5000, pace=0.005)
    try:
        publisher.start()
        publisher.wait_published(100, 20)
        broker_redis.kill()  # SIGKILL: only what Redis fsynced (appendfsync always) survives
        killed_at = time.time()
        time.sleep(2.0)  # the outage
        broker_redis.start()  # same port and directory: replays the append-only file
        up_at = time.time()
        pids = [w.popen.pid for w in pool]
        resumed = wait_resumed(ledger, publisher, pids, up_at, 10)
        publisher.stop.set()
        publisher.join(60)
        assert not publisher.is_alive()
        ledger.wait_done(publisher.published, 60)
        wait_settled(broker_redis, 10)  # and nothing stuck with the live workers
    finally:
        publisher.stop.set()
        stop_all(pool)
    report = Checker(ledger, "5 redis kill -9 + restart").report(
        publisher.published,
        uncertain=publisher.uncertain,
        outage=f"{up_at - killed_at:.1f}s",
        failed_publishes=len(publisher.uncertain),
        resume=",".join(f"{t:.2f}s" for t in sorted(resumed.values())),
    )
    assert not report.lost and not report.unexpected
    assert max(resumed.values()) < 10


def close_connections(name: str) -> int:
    """Close, as the server, every RabbitMQ connection whose client named it ``name``."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "--quiet",
         "--no-table-headers"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    pids = [
        line.split("\t", 1)[0]
        for line in listed.stdout.splitlines()
        if f'{{"connection_name","{name}"}}' in line
    ]
    closing = [
        subprocess.Popen(
            ["rabbitmqctl", "close_connection", pid, "taskq fault injection"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    for process in closing:
        process.wait(30)
    return len(pids)


@pytest.mark.timeout(120)
def test_6_rabbitmq_closes_the_connections_under_load(
    make_config: MakeConfig, ledger: Ledger, producer: Producer, unique: str
) -> None:
    servers.require("amqp")
    name = f"taskq-faults-{unique}"
    dead_queue = f"faults-dead-{unique}"
    config = make_config(
        AMQP_URL,
        transport_options={
            "client_properties": {"connection_name": name},
            "dead_letter_queue": dead_queue,
        },
    )
    pool = [start_worker(config, "-P", "threads", "-c", "4") for _ in range(2)]
    # Paced, and stopped once the workers resumed: rabbitmqctl takes about a second
    # a call, and the load must last until after the connections are closed.
    publisher = Publisher(producer(config), f"s6-{unique}", target=5000, pace=0.005)
    try:
        publisher.start()
        publisher.wait_published(100, 30)
        closing_at = time.time()
        closed = close_connections(name)
        closed_at = time.time()
        assert closed >= 3  # both workers' consumers and the producer's publisher
        # Each worker notices its connection is gone when RabbitMQ closes it, somewhere
        # in those seconds; count its resume time from the error it logged then.
        resumed = {}
        for worker in pool:
            lost_at = first_error_at(worker)
            pid = worker.popen.pid
            resumed.update(wait_resumed(ledger, publisher, [pid], lost_at, 20))
        publisher.wait_published(len(publisher.published) + 50, 20)
        publisher.stop.set()
        publisher.join(30)
        assert not publisher.is_alive()
        ledger.wait_done(publisher.published, 60)
        stop_all(pool)
        waiting = amqp_waiting(config.queue)
    finally:
        publisher.stop.set()
        stop_all(pool)
        delete_amqp(config.queue, dead_queue)
    report = Checker(ledger, "6 rabbitmq close_connection").report(
        publisher.published,
        uncertain=publisher.uncertain,
        connections_closed=closed,
        rabbitmqctl=f"{closed_at - closing_at:.1f}s",
        failed_publishes=len(publisher.uncertain),
        resume=",".join(f"{t:.2f}s" for t in sorted(resumed.values())),
    )
    assert not report.lost and not report.unexpected and waiting == 0


@pytest.mark.timeout(90)
def test_11_producer_burst_while_redis_is_frozen(
    make_config: MakeConfig,
    broker_redis: PrivateRedis,
    ledger: Ledger,
    producer: Producer,
    unique: str,
) -> None:
    """Redis stops answering for 2 s (DEBUG SLEEP) in the middle of a burst from four
    producer threads. Workers use a 1 s socket timeout, so their fetches time out
    during the freeze: the lost-reply case of the Redis broker."""
    workers_config = make_config(
        broker_redis.url, lease=10.0, transport_options={"socket_timeout": 1.0}
    )
    pool = [start_worker(workers_config, "-P", "threads", "-c", "4") for _ in range(2)]
    app = producer(dataclasses.replace(workers_config, transport_options={}))
    burst = [Publisher(app, f"s11-{unique}-{n}", target=50) for n in range(4)]
    try:
        for publisher in burst:
            publisher.start()
        deadline = time.monotonic() + 10
        while sum(len(p.published) for p in burst) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        frozen_at = time.monotonic()
        broker_redis.client().execute_command("DEBUG", "SLEEP", "2")
        frozen_for = time.monotonic() - frozen_at
        for publisher in burst:
            publisher.join(30)
        assert not any(p.is_alive() for p in burst), "a producer thread is stuck"
        published = {i: t for p in burst for i, t in p.published.items()}
        ledger.wait_done(published, 60)
        wait_settled(broker_redis, 10)
    finally:
        for publisher in burst:
            publisher.stop.set()
        stop_all(pool)
    errors = sum("Broker connection error" in line for w in pool for line in w.output.splitlines())
    latency = max(t for p in burst for t in p.latencies)
    report = Checker(ledger, "11 burst during DEBUG SLEEP 2").report(
        published,
        uncertain=[i for p in burst for i in p.uncertain],
        frozen=f"{frozen_for:.1f}s",
        max_publish_latency=f"{latency:.2f}s",
        failed_publishes=sum(len(p.uncertain) for p in burst),
        worker_fetch_errors=errors,
    )
    assert not report.lost and not report.unexpected
    assert latency < frozen_for + 1.0
