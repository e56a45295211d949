"""Issue 12, item 1: what escapes while a worker handles one message dead-letters that
message, with the exception as the reason, instead of ending the worker (reading
it) or giving it back for ever, uncounted (running it).

A bug is simulated where no check can foresee it: inside the code that reads a
message, and inside the code around a task's run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskq import App
from taskq.broker import dlq
from taskq.testing import running_worker
from taskq.worker import consumer, executor
from tests.waiting import wait_until
from tests.worker_support import redis_app

pytestmark = pytest.mark.slow  # a worker and a server


@pytest.fixture
def app(unique: str) -> Iterator[App]:
    app = redis_app(unique)
    yield app
    app.close()


def parked_reasons(app: App) -> dict[str, str]:
    return {p.task_id or "": p.reason for p in dlq.parked(app.producer.broker, 1000)}


def test_an_error_while_reading_one_message_dead_letters_it_and_the_worker_goes_on(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = app.task(name="esc.add")(lambda x, y: x + y)
    real = consumer.decode

    def decode(envelope: Any, accept: list[str]) -> Any:
        if envelope.headers.get("id") == "the-bad-one":
            raise RuntimeError("a bug nobody foresaw")
        return real(envelope, accept)

    monkeypatch.setattr(consumer, "decode", decode)
    app.send_task("esc.add", [1, 2], task_id="the-bad-one")
    with running_worker(app, pool="threads") as worker:
        assert add.delay(2, 3).get(timeout=10) == 5
        wait_until(lambda: "the-bad-one" in parked_reasons(app), 10, "the message parked")
        assert worker.consumer is not None
    reason = parked_reasons(app)["the-bad-one"]
    assert reason == "internal error reading it: RuntimeError('a bug nobody foresaw')"


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_an_error_around_a_task_dead_letters_it_rather_than_requeueing_it_for_ever(
    app: App, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = app.task(name="esc.add")(lambda x, y: x + y)
    real = executor.Executor.begin

    def begin(self: executor.Executor, ctx: Any) -> Any:
        if ctx.id == "the-bad-one":
            raise ValueError("broken bookkeeping")
        return real(self, ctx)

    monkeypatch.setattr(executor.Executor, "begin", begin)
    app.send_task("esc.add", [1, 2], task_id="the-bad-one")
    with running_worker(app, pool=pool):
        wait_until(lambda: "the-bad-one" in parked_reasons(app), 10, "the message parked")
        assert add.delay(2, 3).get(timeout=10) == 5
    assert parked_reasons(app)["the-bad-one"] == (
        "internal error: ValueError('broken bookkeeping')"
    )
