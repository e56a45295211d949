"""Revoking: before start (any worker, also one started later) and with terminate."""

from __future__ import annotations

import logging
import os
import time

import pytest

from taskq import App, ConfigurationError, states
from taskq.control import signal_number
from taskq.errors import SoftTimeLimitExceeded, TaskRevokedError
from taskq.testing import running_worker
from tests.waiting import wait_until
from tests.worker_support import Gate, Ledger


def test_signal_names() -> None:
    assert signal_number("SIGTERM") == signal_number("term") == signal_number(15) == 15
    with pytest.raises(ConfigurationError, match="SIGNOPE"):
        signal_number("SIGNOPE")


def test_revoked_before_a_worker_starts_never_runs(app: App, ledger: Ledger) -> None:
    @app.task(name="t.record")
    def record(i: int) -> int:
        ledger.append(i)
        return i

    doomed = record.delay(1)
    app.control.revoke(doomed.id)
    with running_worker(app, pool="prefork"):  # started after the revoke
        assert record.delay(2).get(timeout=10) == 2
        with pytest.raises(TaskRevokedError):
            doomed.get(timeout=10)
    assert doomed.state == states.REVOKED
    assert ledger.entries() == ["2"]


def test_terminate_stops_only_that_child(release: Gate, app: App, ledger: Ledger) -> None:

    @app.task(name="t.hang")
    def hang(name: str) -> str:
        ledger.append(f"{name}:{os.getpid()}")
        release.wait()
        return name

    with running_worker(app, pool="prefork", concurrency=2, shutdown_timeout=5) as worker:
        victim, bystander = hang.delay("victim"), hang.delay("bystander")
        pids = dict(e.split(":") for e in ledger.wait_for(2))
        app.control.revoke(victim.id, terminate=True, signal="SIGKILL")
        with pytest.raises(TaskRevokedError, match="terminated by SIGKILL"):
            victim.get(timeout=10)
        wait_until(lambda: len(worker.pool.pids()) == 2, 10, "a replacement child")
        assert int(pids["bystander"]) in worker.pool.pids()
        assert int(pids["victim"]) not in worker.pool.pids()
        release.open()
        assert bystander.get(timeout=10) == "bystander"
    assert len(ledger.entries()) == 2  # the terminated task was not redelivered


def test_terminate_with_sigusr1_raises_soft_time_limit_in_the_task(
    app: App, ledger: Ledger
) -> None:
    @app.task(name="t.polite")
    def polite() -> str:
        ledger.append("started")
        try:
            time.sleep(30)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "slept"

    with running_worker(app, pool="prefork", concurrency=1, shutdown_timeout=5):
        result = polite.delay()
        ledger.wait_for(1)
        app.control.revoke(result.id, terminate=True, signal="SIGUSR1")
        assert result.get(timeout=10) == "cleaned up"


def test_threads_pool_cannot_terminate_and_says_so(
    release: Gate, app: App, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "taskq.worker")

    @app.task(name="t.wait")
    def wait() -> str:
        ledger.append("started")
        release.wait()
        return "finished"

    with running_worker(app, pool="threads", concurrency=1):
        result = wait.delay()
        ledger.wait_for(1)
        app.control.revoke(result.id, terminate=True)
        wait_until(lambda: "cannot stop a running task" in caplog.text, 10, "the warning")
        release.open()
        assert result.get(timeout=10) == "finished"


def test_revoke_with_an_unknown_signal_is_refused(app: App) -> None:
    with pytest.raises(ConfigurationError, match="SIGWHAT"):
        app.control.revoke("x", terminate=True, signal="SIGWHAT")
