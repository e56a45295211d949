"""Events: taskq's dispatcher and receiver against Celery's own, on Redis and RabbitMQ,
and the fleet state they feed."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from taskq.events import EventDispatcher, EventReceiver, FleetState
from tests import servers
from tests.waiting import wait_until

celery = pytest.importorskip("celery")
celery_state = pytest.importorskip("celery.events.state")


@pytest.fixture(params=["redis", "amqp"])
def url(request: pytest.FixtureRequest) -> str:
    servers.require(request.param)
    return servers.REDIS_URL if request.param == "redis" else servers.AMQP_URL


@pytest.fixture
def hostname() -> str:
    return f"evtest-{uuid.uuid4().hex[:8]}@localhost"


class Collected:
    """The events a receiver saw from one host name (and from ``listening``'s probe)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.events: list[dict[str, Any]] = []
        self.probed = threading.Event()

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("hostname") == self.hostname:
            self.events.append(event)
        elif event.get("hostname") == f"probe-{self.hostname}":
            self.probed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def wait_for(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        wait_until(
            lambda: self.of(kind),
            timeout,
            f"a {kind} event from {self.hostname} (saw {[e['type'] for e in self.events]})",
        )
        return self.of(kind)[0]


@contextlib.contextmanager
def celery_receiver(url: str, collected: Collected) -> Iterator[None]:
    """Celery's own EventReceiver, consuming in a thread until the block ends."""
    app = celery.Celery("evtest", broker=url)
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": collected})
    consumer = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
    consumer.start()
    try:
        listening(url, collected)
        yield
    finally:
        receiver.should_stop = True
        consumer.join(5)
        conn.release()


def listening(url: str, collected: Collected) -> None:
    """Return once the receiver feeding ``collected`` gets events: a Redis subscriber
    misses what was published before it subscribed, so probe until one arrives."""
    probe = EventDispatcher(
        lambda: kombu.Connection(url), f"probe-{collected.hostname}", task_events=True
    )
    probe.start()
    try:
        for _ in range(50):
            probe.send("task-received", uuid="probe")
            if collected.probed.wait(0.2):
                return
        raise AssertionError("the event receiver got no event within 10s")
    finally:
        probe.close()


@contextlib.contextmanager
def taskq_receiver(url: str, handler: Any) -> Iterator[EventReceiver]:
    receiver = EventReceiver(lambda: kombu.Connection(url), handler)
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(stop, 0.1), daemon=True)
    thread.start()
    receiver.ready.wait(10)
    try:
        yield receiver
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.slow  # runs Celery's event receiver
def test_celery_receiver_reads_taskq_worker_and_task_events(url: str, hostname: str) -> None:
    seen = Collected(hostname)
    dispatcher = EventDispatcher(
        lambda: kombu.Connection(url),
        hostname,
        task_events=True,
        load=lambda: (1, 41),
        heartbeat_interval=0.2,
    )
    with celery_receiver(url, seen):
        dispatcher.start()
        online = seen.wait_for("worker-online")
        dispatcher.send("task-received", uuid="t1", name="proj.add", args="(1, 2)", kwargs="{}")
        dispatcher.send("task-started", uuid="t1")
        dispatcher.send("task-succeeded", uuid="t1", result="3", runtime=0.25)
        succeeded = seen.wait_for("task-succeeded")
        beat = seen.wait_for("worker-heartbeat")
        dispatcher.close()
        seen.wait_for("worker-offline")
    assert online["sw_ident"] == "py-taskq" and online["freq"] == 0.2
    assert beat["active"] == 1 and beat["processed"] == 41 and len(beat["loadavg"]) == 3
    assert succeeded["result"] == "3" and succeeded["runtime"] == 0.25
    for event in seen.events:  # what Celery's State needs from every event
        assert isinstance(event["clock"], int) and event["pid"] > 0
        assert isinstance(event["utcoffset"], int) and event["timestamp"] > 0
    clocks = [e["clock"] for e in seen.events]
    assert clocks == sorted(clocks)
    state = celery_state.State()
    for event in seen.events:
        state.event(dict(event))
    assert state.tasks["t1"].state == "SUCCESS" and state.tasks["t1"].name == "proj.add"
    assert dispatcher.counts()["dropped"] == 0


@pytest.mark.slow  # runs Celery's event dispatcher
def test_taskq_receiver_reads_celery_events(url: str, hostname: str) -> None:
    seen = Collected(hostname)
    fleet = FleetState()

    def handle(event: dict[str, Any]) -> None:
        seen(event)
        fleet.apply(event)

    app = celery.Celery("evtest", broker=url)
    with taskq_receiver(url, handle), app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname=hostname)
        dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=5)
        dispatcher.send("task-received", uuid="t2", name="proj.mul", args="(2,)", kwargs="{}")
        dispatcher.send("task-failed", uuid="t2", exception="ValueError('x')", traceback="tb")
        seen.wait_for("task-failed")
        dispatcher.close()
    task = fleet.task("t2")
    assert task is not None and task.state == "FAILURE" and task.exception == "ValueError('x')"
    worker = fleet.worker(hostname)
    assert worker is not None and worker.alive() and worker.processed == 5


@pytest.mark.slow  # waits out a connect timeout
def test_events_are_dropped_and_counted_when_the_broker_is_down(hostname: str) -> None:
    dispatcher = EventDispatcher(
        lambda: kombu.Connection("redis://127.0.0.1:1/0", connect_timeout=0.2),
        hostname,
        task_events=True,
        buffer_limit=100,
    )
    dispatcher.start()
    for n in range(1000):
        dispatcher.send("task-succeeded", uuid=str(n), result="None", runtime=0.0)
    counts = dispatcher.counts()
    assert counts["buffered"] <= 100
    assert counts["dropped"] >= 900
    dispatcher.close(timeout=2)
    assert dispatcher.counts()["sent"] == 0


def test_a_connection_that_cannot_be_built_drops_events_and_the_thread_lives(
    hostname: str,
) -> None:
    # A plain install once lacked a module kombu's Redis transport imports: building
    # the connection raised, the events thread died and no event was ever sent again.
    attempts = threading.Semaphore(0)

    def broken() -> kombu.Connection:
        attempts.release()
        raise ModuleNotFoundError("No module named 'packaging'")

    dispatcher = EventDispatcher(broken, hostname, task_events=True)
    dispatcher.start()
    try:
        dispatcher.send("task-succeeded", uuid="1", result="None", runtime=0.0)
        assert attempts.acquire(timeout=10)
        dispatcher.send("task-succeeded", uuid="2", result="None", runtime=0.0)
        assert attempts.acquire(timeout=10), "the events thread stopped trying"
    finally:
        dispatcher.close(timeout=2)
    assert dispatcher.counts()["sent"] == 0
    assert dispatcher.counts()["dropped"] >= 1


def test_no_thread_without_worker_or_task_events(hostname: str) -> None:
    dispatcher = EventDispatcher(lambda: kombu.Connection("memory://"), hostname)
    before = threading.active_count()
    dispatcher.start()
    assert threading.active_count() == before
    dispatcher.close()


# -- the fleet state --------------------------------------------------------------------


def test_a_final_state_is_not_undone_by_a_late_event() -> None:
    fleet = FleetState()
    fleet.apply(
        {"type": "task-succeeded", "uuid": "a", "hostname": "w", "clock": 9, "timestamp": 3.0}
    )
    fleet.apply(
        {"type": "task-started", "uuid": "a", "hostname": "w", "clock": 8, "timestamp": 2.0}
    )
    fleet.apply(
        {
            "type": "task-received",
            "uuid": "a",
            "hostname": "w",
            "clock": 7,
            "name": "n",
            "timestamp": 1.0,
        }
    )
    task = fleet.task("a")
    assert task is not None
    assert (task.state, task.name, task.received, task.started) == ("SUCCESS", "n", 1.0, 2.0)


def test_a_retried_task_runs_again_under_the_same_id() -> None:
    fleet = FleetState()
    for clock, kind in enumerate(
        ["task-received", "task-started", "task-retried", "task-received"]
    ):
        fleet.apply({"type": kind, "uuid": "r", "hostname": "w", "clock": clock})
    task = fleet.task("r")
    assert task is not None and task.state == "RECEIVED"


def test_fleet_state_is_bounded() -> None:
    fleet = FleetState(max_tasks=3)
    for n in range(10):
        fleet.apply({"type": "task-received", "uuid": str(n), "hostname": "w", "timestamp": n})
    assert [t.uuid for t in fleet.tasks()] == ["9", "8", "7"]


def test_a_worker_without_heartbeats_is_lost() -> None:
    fleet = FleetState()
    fleet.apply({"type": "worker-heartbeat", "hostname": "w", "freq": 2.0, "local_received": 100.0})
    worker = fleet.worker("w")
    assert worker is not None
    assert worker.alive(now=103.9) and not worker.alive(now=104.1)
    fleet.apply({"type": "worker-offline", "hostname": "w", "local_received": 101.0})
    offline = fleet.worker("w")
    assert offline is not None and not offline.alive(now=101.5)


def test_producers_send_task_sent_with_task_send_sent_event(unique: str) -> None:
    from tests.worker_support import redis_app

    app = redis_app(unique, task_send_sent_event=True)
    seen: list[dict[str, Any]] = []
    try:
        with taskq_receiver(app.broker_url, seen.append):
            result = app.send_task("proj.add", (2, 3), {"z": 1}, countdown=None)
            wait_until(
                lambda: any(e.get("uuid") == result.id for e in seen), 10, "the task-sent event"
            )
    finally:
        app.broker.purge(app.conf.task_default_queue)
        app.close()
    sent = next(e for e in seen if e.get("uuid") == result.id)
    assert sent["type"] == "task-sent" and sent["name"] == "proj.add"
    assert (sent["args"], sent["kwargs"]) == ("(2, 3)", "{'z': 1}")
    assert sent["queue"] == sent["routing_key"] == f"q-{unique}"
    assert sent["hostname"].startswith("gen")
