"""Start-up while the broker is down (issue 11, point 5).

``taskq worker`` and ``taskq beat`` started before their Redis wait for it, logging
each retry, and work once it is up; ``broker_connection_max_retries`` bounds the
wait and ``broker_connection_retry_on_startup=False`` turns it off. The Redis is a
private ``redis-server`` started late on the port the app names.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests import proc
from tests.faults.redis_server import PrivateRedis

pytestmark = pytest.mark.slow  # subprocesses, workers or servers: the full tier

PROJ = """
from taskq import App

app = App(
    "proj",
    beat_schedule={"tick": {"task": "proj.tick", "schedule": 0.5}},
    {settings}
)


@app.task
def tick():
    return "tick"
"""


def project(tmp_path: Path, settings: str = "") -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "proj.py").write_text(PROJ.replace("{settings}", settings))
    return folder


@pytest.fixture
def late_redis(tmp_path: Path) -> PrivateRedis:
    """A Redis on a free port that is not started yet; stopped after the test."""
    server = PrivateRedis(tmp_path / "redis")
    yield server  # type: ignore[misc]
    server.stop()


def start(folder: Path, url: str, command: str) -> proc.Proc:
    environ = proc.env({"TASKQ_BROKER_URL": url, "TASKQ_RESULT_BACKEND": url})
    args = [*proc.TASKQ, "-A", "proj", command, "-l", "info"]
    return proc.Proc(args + (["-P", "solo"] if command == "worker" else []), folder, environ)


def test_worker_and_beat_wait_for_a_broker_that_comes_up_later(
    tmp_path: Path, late_redis: PrivateRedis
) -> None:
    folder = project(tmp_path)
    worker = start(folder, late_redis.url, "worker")
    beat = start(folder, late_redis.url, "beat")
    try:
        for who in (worker, beat):
            line = who.wait_for("Trying again in 1s (retry 1 of 100)")
            assert "cannot connect to the broker: " in line and late_redis.url in line
        worker.wait_for("Trying again in 2s (retry 2 of 100)")  # it backs off
        late_redis.start()
        worker.wait_for("ready.")
        assert "connected to " + late_redis.url + " after " in worker.output
        beat.wait_for("Sending due task tick (proj.tick)")
        worker.wait_for("succeeded")
        assert "Task proj.tick[" in worker.output
    finally:
        assert beat.stop() == 0, beat.output
        assert worker.stop() == 0, worker.output


def test_retries_are_bounded_by_broker_connection_max_retries(
    tmp_path: Path, late_redis: PrivateRedis
) -> None:
    folder = project(tmp_path, "broker_connection_max_retries=2,")
    worker = start(folder, late_redis.url, "worker")
    beat = start(folder, late_redis.url, "beat")
    for who in (worker, beat):
        assert who.popen.wait(30) == 69, who.output
        assert "retry 2 of 2" in who.output, who.output
        assert (
            f"gave up connecting to {late_redis.url} after 2 retries "
            "(broker_connection_max_retries=2)"
        ) in who.output, who.output
        assert "Traceback" not in who.output


def test_retry_on_startup_off_exits_at_once(tmp_path: Path, late_redis: PrivateRedis) -> None:
    folder = project(tmp_path, "broker_connection_retry_on_startup=False,")
    worker = start(folder, late_redis.url, "worker")
    assert worker.popen.wait(30) == 69, worker.output
    assert "broker_connection_retry_on_startup is False" in worker.output
    assert "Trying again" not in worker.output


def test_a_worker_waiting_for_its_broker_stops_on_sigterm(
    tmp_path: Path, late_redis: PrivateRedis
) -> None:
    worker = start(project(tmp_path), late_redis.url, "worker")
    worker.wait_for("Trying again in 1s")
    assert worker.stop(signal.SIGTERM, timeout=10) == 0, worker.output
