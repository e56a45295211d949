"""Issue 12, item 4: a password in a broker or backend URL is never printed.

The worker, beat and the CLI commands run at debug level against a Redis that
requires a known password, and against URLs whose password is wrong or whose
server is unreachable; every line they print, and every error message the
library raises for a URL, is searched for the password.
"""

from __future__ import annotations

import signal
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import App
from taskq.broker import broker_from_url
from taskq.errors import TaskqError
from tests import proc
from tests.faults.redis_server import PrivateRedis

PASSWORD = "s3cr3t-Pw-" + uuid.uuid4().hex[:8]
WRONG = "wr0ng-Pw-" + uuid.uuid4().hex[:8]

PROJECT = """
import os
from taskq import App

app = App(
    "secretproj",
    broker=os.environ["SECRET_BROKER"],
    backend=os.environ["SECRET_BACKEND"],
    beat_schedule={"tick": {"task": "secretproj.tick", "schedule": 0.5}},
    broker_publish_timeout=2.0,
)


@app.task(name="secretproj.tick")
def tick() -> str:
    return "tock"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis", password=PASSWORD)
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "secretproj.py").write_text(textwrap.dedent(PROJECT))
    return tmp_path


def environ(broker: str, backend: str | None = None) -> dict[str, str]:
    return proc.env({"SECRET_BROKER": broker, "SECRET_BACKEND": backend or broker})


def assert_masked(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} printed:\n{text}"


@pytest.mark.timeout(90)
def test_worker_beat_and_cli_at_debug_level_never_print_the_password(
    server: PrivateRedis, project: Path
) -> None:
    env = environ(server.url)
    worker = proc.Proc([*proc.TASKQ, "-A", "secretproj", "worker", "-l", "debug", "-P", "threads"],
                       project, env)  # fmt: skip
    beat = proc.Proc([*proc.TASKQ, "-A", "secretproj", "beat", "-l", "debug"], project, env)
    try:
        worker.wait_for("ready.", timeout=30)
        worker.wait_for("succeeded", timeout=30)  # beat sent a tick and the worker ran it
    finally:
        beat.stop(signal.SIGTERM)
        worker.stop(signal.SIGTERM)
    outputs = [worker.output, beat.output]
    assert "***" in worker.output  # the banner shows the URL, masked
    for args in (
        ["call", "secretproj.tick"],
        ["purge", "-f"],
        ["dlq", "list"],
        ["dlq", "requeue", "--all"],
        ["dlq", "purge", "--force"],
        ["result", "no-such-id"],
    ):
        done = proc.run(project, env, "-A", "secretproj", *args)
        outputs += [done.stdout, done.stderr]
    for text in outputs:
        assert_masked(text, PASSWORD)


@pytest.mark.timeout(90)
def test_failures_never_print_the_password(server: PrivateRedis, project: Path) -> None:
    wrong = server.url.replace(PASSWORD, WRONG)
    unreachable = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    outputs = []
    for url in (wrong, unreachable, f"amqp://guest:{PASSWORD}@127.0.0.1:1//"):
        env = environ(url, backend=url if url.startswith("redis") else wrong)
        for args in (["call", "secretproj.tick"], ["dlq", "list"], ["result", "x"]):
            done = proc.run(project, env, "-A", "secretproj", *args)
            assert done.returncode != 0
            outputs += [done.stdout, done.stderr]
        worker = proc.Proc(
            [*proc.TASKQ, "-A", "secretproj", "worker", "-l", "debug", "-P", "threads"],
            project,
            env,
        )
        try:
            worker.wait_for("rror", timeout=30)  # it says what failed, and goes on trying
        finally:
            worker.stop(signal.SIGTERM)
        outputs.append(worker.output)
    for text in outputs:
        assert_masked(text, PASSWORD, WRONG)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@localhost:6379/0?ssl=true",
        f"redis://:{PASSWORD}@h1:6379,h2:6379/0",
        f"redis://:{PASSWORD}@localhost/abc",
        f"sentinel://:{PASSWORD}@localhost:26379",
        f"reddis://:{PASSWORD}@localhost:6379/0",
        f"redis://user:{PASSWORD}@localhost:notaport/0",
        f"amqp://u:{PASSWORD}@a//;amqp://u:{PASSWORD}@b//",
    ],
)
def test_every_url_error_and_repr_masks_the_password(url: str) -> None:
    app = App("masked", broker=url, backend=url.replace("amqp", "redis").split(";")[0])
    assert_masked(repr(app), PASSWORD)
    for attempt in (
        lambda: broker_from_url(url, consumer_id="c"),
        lambda: app.send_task("x.y"),
        lambda: app.AsyncResult("x").state,
    ):
        try:
            attempt()
        except TaskqError as exc:
            assert_masked(f"{exc} {exc!r} {exc.__cause__}", PASSWORD)
