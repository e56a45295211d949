"""Remote control: taskq's pidbox server answering Celery's client and taskq's, on
Redis and RabbitMQ, and what it does with bad messages. The worker side here is a
small ``WorkerHandle`` that records calls; the workers themselves are tested in
tests/test_operations.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
from kombu.clocks import LamportClock

from taskq import App
from taskq.control import CommandError, Scheduled, TaskInfo
from taskq.control.mailbox import mailbox
from taskq.control.server import ControlServer
from tests import servers

celery = pytest.importorskip("celery")


class Handle:
    """A worker as remote control sees it, recording what it was told."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.calls: list[tuple[str, Any]] = []
        self.task_events = False
        self.running = [
            TaskInfo("t1", "proj.add", [1, 2], {}, "(1, 2)", "{}", hostname, 1.5, True, {}, 7)
        ]

    def active(self) -> list[TaskInfo]:
        return self.running

    def reserved(self) -> list[TaskInfo]:
        return []

    def scheduled(self) -> list[Scheduled]:
        return []

    def stats(self) -> dict[str, Any]:
        return {"pid": 7, "total": {"proj.add": 3}}

    def registered(self) -> dict[str, dict[str, Any]]:
        return {"proj.add": {"rate_limit": "10/m"}, "proj.mul": {}}

    def conf(self, with_defaults: bool) -> dict[str, Any]:
        return {"broker_url": "redis://:***@h/0"}

    def clock(self) -> int:
        return 1

    def revoked(self) -> list[str]:
        return []

    def revoke(self, ids: list[str], terminate: bool, signum: int) -> list[str]:
        self.calls.append(("revoke", (ids, terminate, signum)))
        return ids if terminate else []

    def queues(self) -> list[str]:
        return ["celery"]

    def add_queue(self, name: str) -> bool:
        self.calls.append(("add_queue", name))
        return True

    def cancel_queue(self, name: str) -> bool:
        return name == "celery"

    def resize_pool(self, delta: int) -> int:
        self.calls.append(("resize_pool", delta))
        return 4 + delta

    def autoscale(self, high: int, low: int) -> tuple[int, int]:
        raise CommandError("autoscale needs a prefork pool started with --autoscale")

    def set_rate_limit(self, task_name: str, rate: str | None) -> None:
        self.calls.append(("rate_limit", (task_name, rate)))

    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None:
        self.calls.append(("time_limit", (task_name, soft, hard)))

    def set_task_events(self, enabled: bool) -> bool:
        changed, self.task_events = self.task_events != enabled, enabled
        return changed

    def send_heartbeat(self) -> None:
        pass

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))


@pytest.fixture(params=["redis", "amqp"])
def url(request: pytest.FixtureRequest) -> str:
    servers.require(request.param)
    return servers.REDIS_URL if request.param == "redis" else servers.AMQP_URL


@pytest.fixture
def handle() -> Handle:
    return Handle(f"ctl-{uuid.uuid4().hex[:8]}@localhost")


@pytest.fixture
def app(url: str) -> Iterator[App]:
    app = App("ctl", broker=url)
    yield app
    app.close()


@pytest.fixture
def server(app: App, handle: Handle) -> Iterator[ControlServer]:
    server = ControlServer(
        lambda: kombu.Connection(app.broker_url), handle, mailbox(app.conf), LamportClock()
    )
    server.start()
    assert server.ready.wait(10)
    yield server
    server.stop()


def celery_app(url: str) -> Any:
    return celery.Celery("ctl", broker=url)


@pytest.mark.slow  # runs Celery's control client
def test_celery_inspect_reaches_a_taskq_worker(
    url: str, server: ControlServer, handle: Handle
) -> None:
    inspect = celery_app(url).control.inspect(destination=[handle.hostname], timeout=5)
    assert inspect.ping() == {handle.hostname: {"ok": "pong"}}
    active = inspect.active()
    assert active[handle.hostname][0]["id"] == "t1"
    assert active[handle.hostname][0]["args"] == [1, 2]
    assert inspect.registered() == {handle.hostname: ["proj.add [rate_limit=10/m]", "proj.mul"]}
    assert inspect.stats()[handle.hostname]["total"] == {"proj.add": 3}


@pytest.mark.slow  # runs Celery's control client
def test_celery_control_commands_reach_the_worker(
    url: str, server: ControlServer, handle: Handle
) -> None:
    control = celery_app(url).control
    names = [handle.hostname]
    reply = control.rate_limit("proj.add", "5/s", destination=names, reply=True, timeout=5)
    assert reply == [{handle.hostname: {"ok": "new rate limit set successfully"}}]
    reply = control.enable_events(destination=names, reply=True, timeout=5)
    assert reply == [{handle.hostname: {"ok": "task events enabled"}}]
    reply = control.revoke("t9", destination=names, terminate=True, reply=True, timeout=5)
    assert reply == [{handle.hostname: {"ok": "terminate: t9"}}]
    reply = control.autoscale(4, 2, destination=names, reply=True, timeout=5)
    assert "autoscale needs a prefork pool" in reply[0][handle.hostname]["error"]
    assert ("rate_limit", ("proj.add", "5/s")) in handle.calls
    assert ("revoke", (["t9"], True, 15)) in handle.calls


def test_taskq_control_and_inspect(app: App, server: ControlServer, handle: Handle) -> None:
    names = [handle.hostname]
    assert app.control.ping(destination=names, timeout=5) == [{handle.hostname: {"ok": "pong"}}]
    inspect = app.control.inspect(destination=names, timeout=5)
    assert inspect.query_task("t1") == {
        handle.hostname: {"t1": ["active", handle.running[0].as_celery()]}
    }
    assert inspect.active_queues()[handle.hostname][0]["name"] == "celery"
    reply = app.control.pool_grow(2, destination=names, reply=True, timeout=5)
    assert reply == [{handle.hostname: {"ok": "pool will grow to 6"}}]


def test_unknown_commands_and_bad_arguments_get_an_error(
    app: App, server: ControlServer, handle: Handle
) -> None:
    names = [handle.hostname]
    reply = app.control.broadcast("pnig", {}, names, reply=True, timeout=5)
    assert reply is not None
    error = reply[0][handle.hostname]["error"]
    assert "Unknown control command 'pnig'" in error and "Did you mean 'ping'?" in error
    reply = app.control.broadcast("rate_limit", {"rate": "1/s"}, names, reply=True, timeout=5)
    assert (
        reply is not None and "Bad arguments for 'rate_limit'" in reply[0][handle.hostname]["error"]
    )


def test_malformed_messages_do_not_disturb_the_worker(
    app: App, server: ControlServer, handle: Handle
) -> None:
    box = mailbox(app.conf)
    with kombu.Connection(app.broker_url) as conn:
        producer = kombu.Producer(conn.channel())
        exchange = box(conn).exchange
        for body in (
            ["not", "a", "dict"],
            {"method": 42},
            {"method": "ping", "arguments": [1]},
            "x",
        ):
            producer.publish(body, exchange=exchange, declare=[exchange], serializer="json")
        producer.publish(
            b"\x00garbage",
            exchange=exchange,
            content_type="application/json",
            content_encoding="binary",
        )
    names = [handle.hostname]
    assert app.control.ping(destination=names, timeout=5) == [{handle.hostname: {"ok": "pong"}}]
    assert server.ready.is_set()
