"""Remote control reaching into a real worker: pool sizes, queues, broadcast
revokes and shutdown, through ``app.control`` on Redis."""

from __future__ import annotations

import logging
import threading

import pytest

from taskq import App, signals, states
from taskq.errors import TaskRevokedError
from taskq.testing import running_worker
from taskq.worker.worker import Worker
from tests.waiting import wait_until
from tests.worker_support import Ledger

pytestmark = pytest.mark.slow  # starts workers


def _names(worker: Worker) -> list[str]:
    return [worker.hostname]


def _ready(worker: Worker) -> None:
    assert worker.remote is not None and worker.remote.ready.wait(10)


@pytest.mark.parametrize("pool", ["threads", "prefork", "asyncio"])
def test_pool_grow_and_shrink(app: App, unique: str, pool: str) -> None:
    with running_worker(app, pool=pool, concurrency=2, hostname=f"{pool}-{unique}@x") as worker:
        _ready(worker)
        names = _names(worker)
        reply = app.control.pool_grow(2, destination=names, reply=True, timeout=5)
        assert reply == [{names[0]: {"ok": "pool will grow to 4"}}]
        stats = app.control.inspect(destination=names, timeout=5).stats()
        assert stats is not None and stats[names[0]]["pool"]["max-concurrency"] == 4
        assert stats[names[0]]["prefetch_count"] == 16  # 4 x worker_prefetch_multiplier
        if pool == "prefork":
            wait_until(lambda: len(worker.pool.pids()) == 4, 10, "four children")
        reply = app.control.pool_shrink(3, destination=names, reply=True, timeout=5)
        assert reply == [{names[0]: {"ok": "pool will shrink to 1"}}]
        if pool == "prefork":
            wait_until(lambda: len(worker.pool.pids()) == 1, 10, "one child")


def test_solo_pool_cannot_grow(app: App, unique: str) -> None:
    with running_worker(app, pool="solo", hostname=f"solo-{unique}@x") as worker:
        _ready(worker)
        reply = app.control.pool_grow(1, destination=_names(worker), reply=True, timeout=5)
        assert reply is not None and "cannot grow or shrink" in reply[0][worker.hostname]["error"]


def test_add_and_cancel_consumer(app: App, unique: str, ledger: Ledger) -> None:
    @app.task(name="t.note")
    def note(text: str) -> str:
        ledger.append(text)
        return text

    other = f"q-{unique}-extra"
    with running_worker(app, hostname=f"q-{unique}@x") as worker:
        _ready(worker)
        names = _names(worker)
        reply = app.control.add_consumer(other, destination=names, reply=True, timeout=5)
        assert reply == [{names[0]: {"ok": f"add consumer {other}"}}]
        assert note.apply_async(("extra",), queue=other).get(timeout=10) == "extra"
        queues = app.control.inspect(destination=names, timeout=5).active_queues()
        assert queues is not None
        assert sorted(q["name"] for q in queues[names[0]]) == sorted([f"q-{unique}", other])
        reply = app.control.cancel_consumer(other, destination=names, reply=True, timeout=5)
        assert reply == [{names[0]: {"ok": f"no longer consuming from {other}"}}]
        wait_until(lambda: worker.consumer.queues == [f"q-{unique}"], 5, "the queue cancelled")
    app.broker.purge(other)


def test_broadcast_revoke_stops_a_task_before_it_runs(
    app: App, unique: str, ledger: Ledger
) -> None:
    @app.task(name="t.note")
    def note(text: str) -> str:
        ledger.append(text)
        return text

    with running_worker(app, hostname=f"rv-{unique}@x") as worker:
        _ready(worker)
        names = _names(worker)
        doomed = note.apply_async(("doomed",), countdown=2)  # held for 2 s
        # Celery's broadcast only (no persistent key): the worker remembers it.
        app.control.broadcast("revoke", {"task_id": [doomed.id]}, names, reply=True, timeout=5)
        with pytest.raises(TaskRevokedError):
            doomed.get(timeout=10)
        revoked = app.control.inspect(destination=names, timeout=5).revoked()
        # Only this one was revoked here; a run beside others on the same Redis may
        # list theirs too (Celery's pidbox broadcast reaches every worker of the db).
        assert set(revoked) == {names[0]} and doomed.id in revoked[names[0]]
    assert doomed.state == states.REVOKED and ledger.entries() == []


def test_broadcast_revoke_reaches_a_request_waiting_for_its_rate_limit(
    app: App, unique: str, ledger: Ledger
) -> None:
    @app.task(name="t.slow_note", rate_limit="30/m")  # one start every 2 s
    def slow_note(text: str) -> str:
        ledger.append(text)
        return text

    with running_worker(app, hostname=f"rl-{unique}@x") as worker:
        _ready(worker)
        names = _names(worker)
        first = slow_note.delay("first")
        parked = slow_note.delay("parked")
        wait_until(lambda: worker.holding.parked == 1, 5, "the second request parked")
        reserved = app.control.inspect(destination=names, timeout=5).reserved()
        assert reserved is not None
        assert [t["id"] for t in reserved[names[0]]] == [parked.id]
        app.control.broadcast("revoke", {"task_id": [parked.id]}, names, reply=True, timeout=5)
        assert first.get(timeout=10) == "first"
        with pytest.raises(TaskRevokedError):
            parked.get(timeout=10)
    assert parked.state == states.REVOKED and ledger.entries() == ["first"]


def test_shutdown_by_remote_control(app: App, unique: str) -> None:
    stopped = threading.Event()

    def on_shutdown(sender: Worker, **kwargs: object) -> None:
        if sender.hostname == f"sd-{unique}@x":
            stopped.set()

    signals.worker_shutdown.connect(on_shutdown)
    try:
        with running_worker(app, hostname=f"sd-{unique}@x") as worker:
            _ready(worker)
            reply = app.control.shutdown(destination=_names(worker), reply=True, timeout=5)
            assert reply == [{worker.hostname: {"ok": "shutting down"}}]
            assert stopped.wait(10), "the worker did not stop"
    finally:
        signals.worker_shutdown.disconnect(on_shutdown)


def test_remote_control_can_be_turned_off(unique: str) -> None:
    from tests.worker_support import redis_app

    app = redis_app(unique, worker_enable_remote_control=False)
    try:
        with running_worker(app, hostname=f"off-{unique}@x") as worker:
            assert worker.remote is None
            assert app.control.ping(destination=[worker.hostname], timeout=0.5) == []
    finally:
        app.close()


@pytest.mark.parametrize("accept_unsigned", [False, True])
def test_a_signing_worker_warns_only_when_it_runs_unsigned_commands(
    unique: str, caplog: pytest.LogCaptureFixture, accept_unsigned: bool
) -> None:
    from tests.worker_support import redis_app

    app = redis_app(
        unique,
        security_keys={"k1": "a-secret-of-at-least-32-bytes-" + unique},
        security_accept_unsigned=accept_unsigned,
    )
    try:
        with (
            caplog.at_level(logging.WARNING, logger="taskq.worker"),
            running_worker(app, hostname=f"sig-{unique}@x"),
        ):
            pass
    finally:
        app.close()
    warned = [r.getMessage() for r in caplog.records if "run unsigned" in r.getMessage()]
    assert bool(warned) == accept_unsigned
