"""taskq and real Celery on the same brokers, both ways.

For each broker (Redis, RabbitMQ) one ``celery worker`` and one ``taskq worker`` run
as subprocesses, each on queues of its own (``<kind>-<unique>`` and
``<kind>-<unique>-other``), with results in Celery's Redis backend layout. Each test
runs in both directions: ``taskq->celery`` (a taskq producer, a Celery worker) and
``celery->taskq`` (a Celery producer, a taskq worker); the producer's
``AsyncResult`` reads what the other side's worker stored. The ``mixed`` tests send
one workflow across both fleets. ``pytest tests/test_interop.py`` prints the matrix
(feature x direction x broker) at the end (tests/conftest.py).

Below them, non-taskq producers that are not Celery: the raw Redis recipe of
docs/protocol.md, and kombu publishing as Celery does.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import celery
import celery.exceptions
import kombu
import pytest
import redis

import taskq
from taskq import App
from taskq.testing import running_worker
from tests import proc, servers
from tests.interop import celery_app, taskq_app
from tests.interop.errors import InteropError
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # real workers in subprocesses

BROKERS = ["redis", "amqp"]
DIRECTIONS = ["taskq->celery", "celery->taskq"]
TIMEOUT = 20.0
CELERY = [sys.executable, "-m", "celery"]
ROOT = Path(__file__).parent.parent


@dataclasses.dataclass
class Fleet:
    """One broker with a Celery worker and a taskq worker, and a producer app of each
    kind whose default queue is the *other* kind's worker's."""

    broker: str
    unique: str
    celery_queue: str
    taskq_queue: str
    celery_producer: Any  # a celery.Celery sending to the taskq worker
    taskq_producer: App  # a taskq App sending to the Celery worker
    workers: dict[str, proc.Proc]


@dataclasses.dataclass
class Side:
    """One direction: who produces, and the queues of the worker it sends to."""

    kind: str  # the producer's kind: "taskq" or "celery"
    app: Any
    queue: str  # the other worker's default queue
    other_queue: str  # ... and its second queue
    canvas: Any  # the producer's module for chain/group/chord

    def task(self, name: str) -> Any:
        return self.app.tasks[name]

    def get(self, result: Any, timeout: float = TIMEOUT) -> Any:
        return result.get(timeout=timeout)


def _env(broker_url: str, queue: str, unique: str) -> dict[str, str]:
    return proc.env(
        {
            "INTEROP_BROKER": broker_url,
            "INTEROP_BACKEND": servers.REDIS_URL,
            "INTEROP_QUEUE": queue,
            "INTEROP_PREFIX": f"taskq-test-{unique}:",
            "PYTHONPATH": str(ROOT),
        }
    )


@pytest.fixture(scope="module", params=BROKERS)
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    broker = request.param
    servers.require("redis")
    if broker == "amqp":
        servers.require("amqp")
    url = servers.REDIS_URL if broker == "redis" else servers.AMQP_URL
    unique = uuid.uuid4().hex[:10]
    cq, tq = f"interop-c-{unique}", f"interop-t-{unique}"
    common = ["worker", "-P", "threads", "-c", "4", "-l", "info"]
    celery_args = [
        "-A",
        "tests.interop.celery_app",
        *common,
        "--without-mingle",
        "--without-gossip",
    ]
    taskq_args = ["-A", "tests.interop.taskq_app", *common]
    workers = {
        "celery": proc.Proc(
            [*CELERY, *celery_args, "-Q", f"{cq},{cq}-other", "-n", f"celery-{unique}@%h"],
            ROOT,
            _env(url, cq, unique),
        ),
        "taskq": proc.Proc(
            [*proc.TASKQ, *taskq_args, "-Q", f"{tq},{tq}-other", "-n", f"taskq-{unique}@%h"],
            ROOT,
            _env(url, tq, unique),
        ),
    }
    producers: list[Any] = []
    try:
        for worker in workers.values():
            worker.wait_for("ready.", timeout=60)
        celery_producer = celery_app.make(url, servers.REDIS_URL, tq)
        taskq_producer = taskq_app.make(url, servers.REDIS_URL, cq, f"taskq-test-{unique}:")
        producers += [celery_producer, taskq_producer]
        yield Fleet(broker, unique, cq, tq, celery_producer, taskq_producer, workers)
    finally:
        for worker in workers.values():
            worker.stop()
        for producer in producers:
            producer.close()
        _clean(broker, unique, [cq, f"{cq}-other", tq, f"{tq}-other"])


def _clean(broker: str, unique: str, queues: list[str]) -> None:
    if broker == "amqp":
        with kombu.Connection(servers.AMQP_URL) as conn:
            for queue in queues:
                conn.default_channel.queue_delete(queue)
    client = redis.Redis.from_url(servers.REDIS_URL)
    keys = list(client.scan_iter(match=f"*{unique}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=DIRECTIONS)
def side(request: pytest.FixtureRequest, fleet: Fleet) -> Side:
    if request.param == "taskq->celery":
        return Side("taskq", fleet.taskq_producer, fleet.celery_queue,
                    f"{fleet.celery_queue}-other", taskq)  # fmt: skip
    return Side("celery", fleet.celery_producer, fleet.taskq_queue,
                f"{fleet.taskq_queue}-other", celery)  # fmt: skip


# -- single tasks --------------------------------------------------------------------


def test_send_task(side: Side) -> None:
    result = side.app.send_task("interop.add", (2, 3))
    assert side.get(result) == 5


def test_delay(side: Side) -> None:
    assert side.get(side.task("interop.add").delay(40, 2)) == 42


def test_kwargs(side: Side) -> None:
    result = side.task("interop.echo").apply_async((1,), {"a": [1, 2], "b": {"c": None}})
    assert side.get(result) == [[1], {"a": [1, 2], "b": {"c": None}}]


def test_failure_raises_the_tasks_exception(side: Side) -> None:
    result = side.task("interop.fail").delay("broken on purpose")
    with pytest.raises(InteropError, match="broken on purpose"):
        side.get(result)
    assert result.state == "FAILURE"
    assert "InteropError" in (result.traceback or "")


def test_countdown(side: Side) -> None:
    sent = time.time()
    result = side.task("interop.when").apply_async(countdown=1)
    assert side.get(result) >= sent + 1


def test_eta(side: Side) -> None:
    eta = datetime.now(timezone.utc) + timedelta(seconds=1)
    result = side.task("interop.when").apply_async(eta=eta)
    assert side.get(result) >= eta.timestamp()


def test_retry_keeps_a_non_default_queue(side: Side) -> None:
    result = side.task("interop.retry_once").apply_async(queue=side.other_queue)
    assert side.get(result) == {"retries": 1, "queue": side.other_queue}


def _answers_celerys_broadcasts() -> bool:
    """Whether taskq has Celery's remote control (issue 14: taskq workers answer
    Celery's broadcast revoke, and taskq's revoke is broadcast to Celery workers)."""
    try:
        return importlib.util.find_spec("taskq.control.server") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.xfail(
    not _answers_celerys_broadcasts(),
    reason="Celery revokes by broadcast (pidbox); taskq speaks it with issue 14's remote control",
    strict=True,
)
def test_revoke(side: Side) -> None:
    revoked = side.task("interop.when").apply_async(countdown=1)
    side.app.control.revoke(revoked.id)
    # Due a second after the revoked one: once it ran, the revoked one would have too.
    later = side.task("interop.when").apply_async(countdown=2)
    side.get(later)
    with pytest.raises((celery.exceptions.TaskRevokedError, taskq.errors.TaskRevokedError)):
        side.get(revoked)
    assert side.app.AsyncResult(revoked.id).state == "REVOKED"


def test_async_result_reads_the_others_result(side: Side) -> None:
    result = side.task("interop.add").delay(1, 2)
    assert side.get(result) == 3
    again = side.app.AsyncResult(result.id)
    assert (again.state, again.result, again.successful()) == ("SUCCESS", 3, True)
    assert again.date_done is not None


# -- canvas --------------------------------------------------------------------------


def test_chain(side: Side) -> None:
    add = side.task("interop.add")
    result = side.canvas.chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    assert side.get(result) == 10
    assert side.get(result.parent) == 6


def test_group(side: Side) -> None:
    add = side.task("interop.add")
    result = side.canvas.group(add.s(i, i) for i in range(5)).apply_async()
    assert side.get(result) == [0, 2, 4, 6, 8]


def test_chord(side: Side) -> None:
    add, tsum = side.task("interop.add"), side.task("interop.tsum")
    result = side.canvas.chord([add.s(i, i) for i in range(5)], tsum.s()).apply_async()
    assert side.get(result) == 20


def test_chord_with_a_failing_member(side: Side) -> None:
    add, fail, tsum = (side.task(n) for n in ("interop.add", "interop.fail", "interop.tsum"))
    result = side.canvas.chord([add.s(1, 1), fail.si("member")], tsum.s()).apply_async()
    # taskq's get() raises the body's ChordError naming the failed member. Celery's
    # follows .parent first: it raises the member's own error when that is stored by
    # the time get() starts, else it waits on the body and raises the ChordError (a
    # race in Celery itself). The body failed either way.
    chord_errors = (taskq.errors.ChordError, celery.exceptions.ChordError)
    expected = (InteropError, *chord_errors) if side.kind == "celery" else chord_errors
    with pytest.raises(expected, match="member"):
        side.get(result)
    body = side.app.AsyncResult(result.id)
    wait_until(lambda: body.state == "FAILURE", TIMEOUT, "the chord body to be failed")
    assert type(body.result).__name__ == "ChordError"


# -- mixed fleets: one workflow across both kinds of worker ---------------------------


@pytest.mark.parametrize("producer", ["taskq", "celery"])
def test_mixed_chain(fleet: Fleet, producer: str) -> None:
    app = fleet.taskq_producer if producer == "taskq" else fleet.celery_producer
    module = taskq if producer == "taskq" else celery
    where = app.tasks["interop.where"]
    steps = [
        app.tasks["interop.add"].s(1, 2).set(queue=fleet.celery_queue),
        app.tasks["interop.add"].s(3).set(queue=fleet.taskq_queue),
        where.si().set(queue=fleet.celery_queue),
    ]
    result = module.chain(*steps).apply_async()
    assert result.get(timeout=TIMEOUT)["queue"] == fleet.celery_queue
    assert result.parent.get(timeout=TIMEOUT) == 6


@pytest.mark.parametrize("producer", ["taskq", "celery"])
def test_mixed_chord(fleet: Fleet, producer: str) -> None:
    """Header tasks on both kinds of worker, the body on each in turn."""
    app = fleet.taskq_producer if producer == "taskq" else fleet.celery_producer
    module = taskq if producer == "taskq" else celery
    add, tsum = app.tasks["interop.add"], app.tasks["interop.tsum"]
    queues = [fleet.celery_queue, fleet.taskq_queue]
    for body_queue in queues:
        header = [add.s(i, i).set(queue=queues[i % 2]) for i in range(6)]
        result = module.chord(header, tsum.s().set(queue=body_queue)).apply_async()
        assert result.get(timeout=TIMEOUT) == 30


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param("succeeds", id="celery->taskq-succeeds"),
        pytest.param("fails", id="celery->taskq-fails"),
    ],
)
def test_chord_unlock_from_a_celery_database_backend(
    fleet: Fleet, tmp_path: Path, outcome: str
) -> None:
    """A Celery producer whose result backend cannot count chord parts (SQL) sends the
    header and a ``celery.chord_unlock`` task; taskq workers run all of it."""
    producer = celery_app.make(
        servers.AMQP_URL if fleet.broker == "amqp" else servers.REDIS_URL,
        f"db+sqlite:///{tmp_path / 'celery-results.sqlite3'}",
        fleet.taskq_queue,
    )
    try:
        add, tsum = producer.tasks["interop.add"], producer.tasks["interop.tsum"]
        header = [add.s(i, i) for i in range(4)]
        if outcome == "fails":
            header.append(producer.tasks["interop.fail"].si("in the header"))
        body_id = celery.chord(header, tsum.s()).apply_async(interval=0.2).id
    finally:
        producer.close()
    # The results are in the taskq workers' backend (Redis), read by a taskq client.
    body = fleet.taskq_producer.AsyncResult(body_id)
    if outcome == "succeeds":
        assert body.get(timeout=TIMEOUT) == 12
    else:
        with pytest.raises(taskq.errors.ChordError, match="in the header"):
            body.get(timeout=TIMEOUT)


def test_mixed_eta_on_redis_reaches_celery_workers(fleet: Fleet) -> None:
    """With ``task_eta_in_queue`` a taskq producer's countdown lands where Celery
    workers look (its queue), not in taskq's delayed store."""
    if fleet.broker != "redis":
        pytest.skip("Redis only: on RabbitMQ both use broker-side delays")
    # A key prefix of its own: the fleet's taskq worker never sees this producer's
    # delayed store, as in a fleet of Celery workers only.
    app = taskq_app.make(
        servers.REDIS_URL,
        servers.REDIS_URL,
        fleet.celery_queue,
        f"taskq-test-{fleet.unique}-alone:",
        task_eta_in_queue=True,
    )
    try:
        sent = time.time()
        result = app.tasks["interop.when"].apply_async(countdown=1)
        assert result.get(timeout=TIMEOUT) >= sent + 1
    finally:
        app.close()


# -- producers that are neither taskq nor Celery -------------------------------------


def celery_style_message(task_id: str, args: list[Any]) -> tuple[str, dict[str, Any]]:
    body = json.dumps(
        [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    headers = {
        "lang": "py",
        "task": "interop.add",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
    }
    return body, headers


def make_app(broker: str, unique: str) -> App:
    app = App(
        "interop", broker=broker, backend=servers.REDIS_URL, task_default_queue=f"interop-{unique}"
    )

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_raw_redis_producer_from_the_protocol_doc(redis_url: str, unique: str) -> None:
    app = make_app(redis_url, unique)
    queue = app.conf.task_default_queue
    task_id = str(uuid.uuid4())
    body, headers = celery_style_message(task_id, [2, 3])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }
    redis.Redis.from_url(redis_url).lpush(queue, json.dumps(envelope))
    with running_worker(app):
        assert app.AsyncResult(task_id).get(timeout=10) == 5
    app.close()


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_kombu_producer_as_celery_publishes(broker: str, unique: str) -> None:
    servers.require("redis")
    url = servers.REDIS_URL if broker == "redis" else servers.AMQP_URL
    if broker == "amqp":
        servers.require("amqp")
    app = make_app(url, unique)
    queue_name = app.conf.task_default_queue
    task_id = str(uuid.uuid4())
    body, headers = celery_style_message(task_id, [40, 2])
    with running_worker(app):  # the worker declares the queue and its binding first
        with kombu.Connection(url) as conn:
            exchange = kombu.Exchange(queue_name, "direct")
            queue = kombu.Queue(queue_name, exchange, routing_key=queue_name)
            conn.Producer().publish(
                body,
                exchange=exchange,
                routing_key=queue_name,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                correlation_id=task_id,
                delivery_mode=2,
                declare=[queue],
            )
        assert app.AsyncResult(task_id).get(timeout=10) == 42
    app.close()


def test_workers_stayed_up(fleet: Fleet) -> None:
    """Nothing above took a worker down (a crash would hide behind timeouts)."""
    for kind, worker in fleet.workers.items():
        assert worker.popen.poll() is None, f"{kind} worker exited:\n{worker.output}"
