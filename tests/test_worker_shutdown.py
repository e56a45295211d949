"""Shutting a real ``taskq worker`` process down with signals, as an operator would.

Every run of the task appends its number to a Redis list (the ledger), so the
tests see exactly what ran: after a warm or cold shutdown and a second worker
draining the rest, everything published ran, and nothing ran twice.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import App
from tests import proc
from tests.worker_support import Ledger, redis_app

PROJECT = """
import time

import redis

from taskq import App

app = App(
    "shutproj",
    broker={url!r},
    backend={url!r},
    task_default_queue={queue!r},
    broker_transport_options={{"key_prefix": {prefix!r}}},
    worker_shutdown_timeout=20,
)
_redis = None


@app.task(name="shut.work")
def work(i, seconds):
    global _redis
    _redis = _redis or redis.Redis.from_url({url!r})
    _redis.rpush({started!r}, i)
    if not _redis.exists({fast!r}):
        time.sleep(seconds)
    _redis.rpush({done!r}, i)
"""


@pytest.fixture
def app(unique: str, tmp_path: Path) -> Iterator[App]:
    app = redis_app(unique)
    conf = app.conf
    (tmp_path / "shutproj.py").write_text(
        PROJECT.format(
            url=app.broker_url,
            queue=conf.task_default_queue,
            prefix=conf.broker_transport_options["key_prefix"],
            started=Ledger(unique, "started").key,
            done=Ledger(unique, "done").key,
            fast=f"taskq-test-{unique}:fast",
        )
    )
    yield app
    for name in ("started", "done", "fast"):
        Ledger(unique, name).delete()
    app.close()


def start_worker(tmp_path: Path, *args: str) -> proc.Proc:
    worker = proc.Proc(
        [*proc.TASKQ, "-A", "shutproj", "worker", "-c", "2", "-P", "prefork", *args],
        tmp_path,
        proc.env(),
    )
    worker.wait_for("concurrency: 2 (prefork)")
    return worker


def drain(tmp_path: Path, done: Ledger, total: int) -> None:
    """Run a second worker until every task is done, then stop it."""
    worker = start_worker(tmp_path)
    try:
        done.wait_for(total, timeout=30)
    finally:
        assert worker.stop() == 0, worker.output


def test_warm_shutdown_finishes_running_tasks_and_returns_the_rest(
    app: App, unique: str, tmp_path: Path
) -> None:
    done = Ledger(unique, "done")
    total = 30
    for i in range(total):
        app.send_task("shut.work", [i, 0.2])
    logfile = tmp_path / "worker.log"
    worker = start_worker(tmp_path, "--json-logs", "--logfile", str(logfile))
    done.wait_for(4, timeout=20)
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(25) == 0, worker.output
    first = done.entries()
    assert len(first) == len(set(first)) < total
    assert set(first) <= set(Ledger(unique, "started").entries())

    records = [json.loads(line) for line in logfile.read_text().splitlines()]
    messages = [r["message"] for r in records]
    assert any("SIGTERM received: warm shutdown" in m for m in messages)
    assert any(m.startswith("Task shut.work[") and " received" in m for m in messages)
    assert any(
        "succeeded in" in m and r["process"].startswith("ForkPoolWorker")
        for r, m in zip(records, messages, strict=True)
    )

    drain(tmp_path, done, total)
    executed = done.entries()
    assert sorted(executed, key=int) == [str(i) for i in range(total)]  # all ran, once each


def test_second_sigterm_is_cold_and_loses_nothing(app: App, unique: str, tmp_path: Path) -> None:
    started, done = Ledger(unique, "started"), Ledger(unique, "done")
    total = 6
    for i in range(total):
        app.send_task("shut.work", [i, 30])
    worker = start_worker(tmp_path)
    started.wait_for(2, timeout=20)
    worker.popen.send_signal(signal.SIGTERM)
    worker.wait_for("warm shutdown")
    worker.popen.send_signal(signal.SIGTERM)
    worker.wait_for("cold shutdown")
    assert worker.popen.wait(15) == 0, worker.output
    assert done.entries() == []  # the two running tasks were stopped, not finished

    Ledger(unique, "fast").client.set(f"taskq-test-{unique}:fast", 1)
    drain(tmp_path, done, total)
    assert sorted(done.entries(), key=int) == [str(i) for i in range(total)]
