"""The contract every broker and backend combination and every pool must honour,
end to end: a real worker (in a thread; prefork children forked from this
process) consumes what the app publishes."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskq import App, BrokerError, NotRegistered, monkey, states
from taskq.broker import dlq
from taskq.broker.base import Envelope
from taskq.errors import TaskError
from taskq.testing import running_worker
from tests import servers
from tests.green_run import run_patched
from tests.waiting import wait_until

# Starts workers or subprocesses: the full tier only (scripts/test).
pytestmark = pytest.mark.slow


COMBOS = ["memory", "redis", "amqp+redis", "sqlite"]
# A process patched for gevent or eventlet (tests/green_run.py) runs the suite with
# that pool only; any other process with the rest, and runs the green ones in such
# a process (test_green_pools_honour_the_contract).
GREEN = monkey.green()
POOLS = [GREEN] if GREEN else ["threads", "prefork", "solo", "asyncio"]
# Objects the prefork children inherit by fork and share with this process.
FORK = multiprocessing.get_context("fork")


def make_app(combo: str, unique: str, tmp_path: Path, **settings: Any) -> App:
    settings.setdefault("task_default_queue", f"q-{unique}")
    settings.setdefault("worker_lease_timeout", 10.0)
    if combo == "memory":
        return App("contract", broker="memory://", backend="memory://", **settings)
    if combo == "sqlite":
        url = f"sqlite:///{tmp_path / 'taskq.sqlite3'}"
        return App("contract", broker=url, backend=url, **settings)
    servers.require("redis")
    if combo == "redis":
        return App(
            "contract",
            broker=servers.REDIS_URL,
            backend=servers.REDIS_URL,
            broker_transport_options={"key_prefix": f"taskq-test-{unique}:"},
            **settings,
        )
    servers.require("amqp")
    # A dead-letter queue of the test's own (deleted afterwards): the default is shared.
    settings.setdefault("broker_transport_options", {"dead_letter_queue": f"dq-{unique}"})
    return App("contract", broker=servers.AMQP_URL, backend=servers.REDIS_URL, **settings)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every broker combination, and with ``pool`` every pool that can reach it:
    memory:// lives in one process, so prefork children cannot use it."""
    explicit = {
        name
        for mark in metafunc.definition.iter_markers("parametrize")
        for name in (
            mark.args[0] if isinstance(mark.args[0], (list, tuple)) else mark.args[0].split(",")
        )
    }
    if "combo" not in metafunc.fixturenames or "combo" in {n.strip() for n in explicit}:
        return
    if "pool" in metafunc.fixturenames:
        pairs = [(c, p) for c in COMBOS for p in POOLS if (c, p) != ("memory", "prefork")]
        metafunc.parametrize(("combo", "pool"), pairs)
    else:
        metafunc.parametrize("combo", COMBOS)


@pytest.fixture
def app(combo: str, unique: str, tmp_path: Path) -> Iterator[App]:
    app = make_app(combo, unique, tmp_path)
    yield app
    app.close()


class Tasks:
    """The task bodies the contract uses, registered on one app."""

    def __init__(self, app: App) -> None:
        # A multiprocessing Event blocks the whole process when waited on; in a
        # patched process threading.Event is the cooperative one.
        self.gate: Any = threading.Event() if GREEN else FORK.Event()
        self._attempts: Any = FORK.SimpleQueue()
        gate, attempts = self.gate, self._attempts

        @app.task(name="contract.add")
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name="contract.async_add")
        async def async_add(x: int, y: int) -> int:
            await asyncio.sleep(0.01)
            return x + y

        @app.task(name="contract.fail")
        def fail(key: str) -> None:
            raise KeyError(key)

        @app.task(name="contract.flaky", bind=True, max_retries=3)
        def flaky(self: Any, succeed_on: int) -> int:
            attempts.put(self.request.retries)
            if self.request.retries + 1 < succeed_on:
                raise self.retry(exc=ValueError("not yet"), countdown=0.2)
            return int(self.request.retries)

        @app.task(name="contract.progress", bind=True)
        def progress(self: Any) -> str:
            self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
            assert gate.wait(10), "the test never opened the gate"
            return "finished"

        @app.task(name="contract.where", bind=True)
        def where(self: Any) -> str:
            return str(self.request.delivery_info["routing_key"])

        self.add, self.fail, self.flaky, self.progress, self.where = (
            add,
            fail,
            flaky,
            progress,
            where,
        )
        self.async_add = async_add

    def attempts(self) -> list[int]:
        """The ``retries`` of each run of ``flaky``, in order."""
        seen = []
        while not self._attempts.empty():
            seen.append(self._attempts.get())
        return seen


def test_publish_execute_result(app: App, pool: str) -> None:
    t = Tasks(app)
    with running_worker(app, pool=pool) as worker:
        assert t.async_add.delay(4, 5).get(timeout=10) == 9
        result = t.add.delay(2, 3)
        assert result.get(timeout=10) == 5
        assert result.state == states.SUCCESS
        assert result.successful() and result.ready() and not result.failed()
        assert result.worker == worker.hostname
        assert result.date_done is not None
        assert result.runtime is not None and result.runtime >= 0


def test_failure_keeps_type_and_traceback(app: App, pool: str) -> None:
    t = Tasks(app)
    with running_worker(app, pool=pool):
        result = t.fail.delay("missing")
        with pytest.raises(KeyError, match="missing"):
            result.get(timeout=10)
        assert result.state == states.FAILURE and result.failed()
        assert result.traceback is not None and "KeyError" in result.traceback
        assert isinstance(result.get(timeout=1, propagate=False), KeyError)


def test_retry_with_countdown(app: App, pool: str) -> None:
    t = Tasks(app)
    with running_worker(app, pool=pool):
        assert t.flaky.delay(3).get(timeout=15) == 2
    assert t.attempts() == [0, 1, 2]


def test_custom_state_is_visible_while_running(app: App, pool: str) -> None:
    t = Tasks(app)
    with running_worker(app, pool=pool):
        result = t.progress.delay()
        wait_until(lambda: result.state == "PROGRESS", timeout=10)
        assert result.info == {"done": 1, "total": 2}
        t.gate.set()
        assert result.get(timeout=10) == "finished"


def test_routing_to_named_queues(combo: str, pool: str, unique: str, tmp_path: Path) -> None:
    routed = f"routed-{unique}"
    app = make_app(combo, unique, tmp_path, task_routes={"contract.where": {"queue": routed}})
    t = Tasks(app)
    with running_worker(app, queues=[app.conf.task_default_queue, routed], pool=pool):
        assert t.where.delay().get(timeout=10) == routed
        other = f"percall-{unique}"
        with running_worker(app, queues=[other], pool=pool):
            assert t.where.apply_async(queue=other).get(timeout=10) == other
    app.close()


def test_unknown_task_fails_with_not_registered_and_worker_goes_on(app: App, pool: str) -> None:
    t = Tasks(app)
    with running_worker(app, pool=pool):
        result = app.send_task("contract.no_such_task", [1])
        with pytest.raises(NotRegistered, match="contract.no_such_task"):
            result.get(timeout=10)
        assert t.add.delay(1, 1).get(timeout=10) == 2


def test_an_unknown_task_is_kept_and_reruns_once_deployed_and_requeued(app: App, pool: str) -> None:
    """Issue 12, item 9: dead-lettered with reason NotRegistered (not acked and
    dropped), the failure recorded at once, and a requeue after the code is
    deployed runs it and replaces the result."""
    Tasks(app)
    with running_worker(app, pool=pool):
        result = app.send_task("contract.later", [41])
        with pytest.raises(NotRegistered, match="contract.later"):
            result.get(timeout=10)
    parked = [p for p in dlq.parked(app.broker, 1000) if p.task_id == result.id]
    assert [p.reason.partition(":")[0] for p in parked] == ["NotRegistered"]
    app.task(name="contract.later")(_plus_one)  # the code is deployed
    assert dlq.requeue(app.broker, [parked[0].id]) == 1
    with running_worker(app, pool=pool):
        wait_until(lambda: app.AsyncResult(result.id).state == states.SUCCESS, 15, "rerun")
    assert app.AsyncResult(result.id).get(timeout=1) == 42
    assert not [p for p in dlq.parked(app.broker, 1000) if p.task_id == result.id]


def _plus_one(x: int) -> int:
    return x + 1


@pytest.mark.parametrize(
    ("body", "content_type", "headers"),
    [
        (b"{not json", "application/json", {"task": "contract.add", "id": "bad-json"}),
        (b"[[1, 2], {}, {}]", "application/json", {"id": "no-task-header"}),
        (
            b"\x80\x04K\x01.",
            "application/x-python-serialize",
            {"task": "contract.add", "id": "pickled"},
        ),
    ],
    ids=["bad-json", "missing-header", "not-accepted"],
)
def test_malformed_messages_do_not_stop_the_worker(
    app: App, pool: str, body: bytes, content_type: str, headers: dict[str, str]
) -> None:
    t = Tasks(app)
    queue = app.conf.task_default_queue
    app.broker.publish(Envelope(body, content_type, "utf-8", headers), queue)
    with running_worker(app, pool=pool):
        assert t.add.delay(20, 22).get(timeout=10) == 42
    if app.broker_url.startswith(("redis", "sqlite")):
        parked = app.broker.dead_letters()
        assert [d.reason for d in parked if d.queue == queue], (
            "the bad message was not dead-lettered"
        )


def test_unreachable_broker_raises_after_retry_policy(unique: str) -> None:
    for url in ("redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//"):
        app = App("t", broker=url, backend="memory://", broker_connection_timeout=1.0)
        add = app.task(name="t.add")(lambda x, y: x + y)
        with pytest.raises(BrokerError, match="after 4 attempt"):
            add.delay(1, 2)


def test_unimportable_exception_becomes_task_error(app: App) -> None:
    backend = app.require_backend()
    backend.store(
        "ext",
        states.FAILURE,
        {"exc_type": "Gone", "exc_module": "no.such.module", "exc_message": ["x"]},
    )
    with pytest.raises(TaskError, match="no.such.module.Gone: x"):
        app.AsyncResult("ext").get(timeout=1)


@pytest.mark.parametrize(
    ("combo", "first"),
    [("amqp+redis", "high"), ("redis", "low-number"), ("sqlite", "high")],
)
def test_priorities(combo: str, first: str, unique: str, tmp_path: Path) -> None:
    """RabbitMQ and SQLite serve higher numbers first; Redis, as kombu does, lower."""
    app = make_app(
        combo, unique, tmp_path, task_queue_max_priority=10, worker_prefetch_multiplier=1
    )
    order: list[int] = []

    @app.task(name="contract.record")
    def record(priority: int) -> None:
        order.append(priority)

    from taskq.broker.base import QueueSpec

    app.broker.declare([QueueSpec(app.conf.task_default_queue, 10)])
    for priority in (0, 9, 0, 9):
        record.apply_async((priority,), priority=priority)
    from taskq.testing import run_until_empty

    run_until_empty(app)
    expected = [9, 9, 0, 0] if first == "high" else [0, 0, 9, 9]
    assert order == expected
    app.close()


@pytest.mark.timeout(300)
@pytest.mark.skipif(GREEN is not None, reason="runs the suite in patched processes itself")
@pytest.mark.parametrize("green", ["gevent", "eventlet"])
def test_green_pools_honour_the_contract(green: str) -> None:
    """The contract suite above, with every broker combination, in a process
    patched for ``green`` before anything is imported, as ``taskq worker -P green``
    is (tests/green_run.py)."""
    print(run_patched(green, __file__))
