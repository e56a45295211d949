"""Signals: the API, where the worker fires them, and handlers that raise."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import signals
from taskq.testing import running_worker, test_app
from taskq.worker.worker import Worker
from tests.worker_support import Ledger, redis_app


@pytest.fixture
def connected() -> Iterator[list[tuple[signals.Signal[Any], Any]]]:
    """Handlers connected during a test, disconnected after it (signals are global)."""
    made: list[tuple[signals.Signal[Any], Any]] = []
    yield made
    for signal, handler in made:
        signal.disconnect(handler)


def test_connect_as_decorator_sender_filter_and_disconnect() -> None:
    sig: signals.Signal[Any] = signals.Signal("demo", ("value",))
    seen: list[tuple[Any, int]] = []

    @sig.connect
    def every(sender: Any, value: int, **kwargs: Any) -> int:
        seen.append((sender, value))
        return value * 2

    only_b = sig.connect(lambda sender, **kwargs: seen.append(("only b", 0)), sender="b")
    replies = sig.send("a", value=1)
    assert [r for _, r in replies] == [2]
    sig.send(type("Task", (), {"name": "b"})(), value=2)  # a task matches by name
    assert seen[-1] == ("only b", 0)
    sig.disconnect(every)
    sig.disconnect(only_b)
    assert sig.send("a", value=3) == []
    with pytest.raises(TypeError, match="demo.send"):
        sig.send("a", wrong=1)


def test_task_and_worker_signals_fire_and_a_raising_handler_breaks_nothing(
    connected: list[tuple[signals.Signal[Any], Any]], caplog: pytest.LogCaptureFixture
) -> None:
    app = test_app()
    events: list[str] = []

    def boom(**kwargs: Any) -> None:
        raise RuntimeError("handler bug")

    def recorder(name: str) -> Any:
        return lambda sender, **kwargs: events.append(name)

    for sig in (signals.task_prerun, signals.task_success, signals.worker_ready):
        sig.connect(boom)  # first, so the others must still run after it
        connected.append((sig, boom))
    for sig in (
        signals.task_prerun,
        signals.task_postrun,
        signals.task_success,
        signals.task_failure,
        signals.task_retry,
        signals.task_revoked,
        signals.worker_ready,
        signals.worker_shutdown,
    ):
        handler = sig.connect(recorder(sig.name))
        connected.append((sig, handler))

    @app.task(name="t.ok")
    def ok() -> str:
        return "fine"

    @app.task(name="t.bad")
    def bad() -> None:
        raise ValueError("task bug")

    @app.task(name="t.again", bind=True, max_retries=1)
    def again(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "second try"

    revoked = ok.delay()
    app.control.revoke(revoked.id)
    with caplog.at_level(logging.ERROR, "taskq.signals"), running_worker(app, pool="threads"):
        assert ok.delay().get(timeout=10) == "fine"
        with pytest.raises(ValueError, match="task bug"):
            bad.delay().get(timeout=10)
        assert again.delay().get(timeout=10) == "second try"
        assert revoked.state == "REVOKED"
    for name in ("task_prerun", "task_postrun", "task_success", "task_failure", "task_retry"):
        assert name in events, name
    assert events.count("task_revoked") == 1
    assert events[0] == "worker_ready" and events[-1] == "worker_shutdown"
    assert "RuntimeError: handler bug" in caplog.text  # logged with its traceback


def test_prefork_children_fire_process_init_and_task_signals(
    unique: str, connected: list[tuple[signals.Signal[Any], Any]]
) -> None:
    app = redis_app(unique)
    ledger = Ledger(unique)

    def on_init(sender: Any, pid: int, **kwargs: Any) -> None:
        ledger.append(f"init:{pid}")

    def on_success(sender: Any, result: Any, **kwargs: Any) -> None:
        ledger.append(f"success:{os.getpid()}")

    connected += [
        (signals.worker_process_init, signals.worker_process_init.connect(on_init)),
        (signals.task_success, signals.task_success.connect(on_success, sender="t.pid")),
    ]

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    try:
        with running_worker(app, pool="prefork", concurrency=2) as worker:
            child = pid.delay().get(timeout=10)
            entries = ledger.wait_for(3)
            assert sorted(e for e in entries if e.startswith("init:")) == sorted(
                f"init:{p}" for p in worker.pool.pids()
            )
            assert f"success:{child}" in entries
    finally:
        ledger.delete()
        app.close()


def test_worker_shutdown_fires_once_everything_is_settled(
    connected: list[tuple[signals.Signal[Any], Any]],
) -> None:
    app = test_app()
    seen: list[Worker] = []
    handler = signals.worker_shutdown.connect(lambda sender, **kwargs: seen.append(sender))
    connected.append((signals.worker_shutdown, handler))
    with running_worker(app, pool="solo") as worker:
        pass
    assert seen == [worker]
