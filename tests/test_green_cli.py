"""``taskq worker -P gevent`` and ``-P eventlet`` as a user runs them: the command
patches before anything is imported, the broker clients' sockets are the
library's, the lease outlives a task that never yields, and a missing library
names its extra."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import App, states
from taskq.broker.redis import RedisBroker
from tests import proc, servers
from tests.worker_support import Ledger, redis_app

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("pool", ["gevent", "eventlet"])]

PROJECT = """
import json
import sys
import time

from taskq import App, monkey

# What the process looked like when the app was imported: the patch came first.
AT_IMPORT = {{"patched": monkey.patched({pool!r}), "green": monkey.green()}}

app = App(
    "proj",
    broker={url!r},
    backend={url!r},
    task_default_queue={queue!r},
    broker_transport_options={{"key_prefix": {prefix!r}}},
    worker_lease_timeout={lease!r},
)


@app.task(name="green.inspect")
def inspect():
    import kombu
    import redis

    client = redis.Redis.from_url({url!r})
    client.ping()
    redis_sock = client.connection_pool.get_connection()._sock
    with kombu.Connection({amqp!r}) as conn:
        conn.connect()
        amqp_sock = conn.connection.sock
    return {{
        **AT_IMPORT,
        "now": monkey.patched({pool!r}),
        "redis": type(redis_sock).__module__,
        "amqp": type(amqp_sock).__module__,
    }}


@app.task(name="green.compute")
def compute(seconds):
    import redis

    redis.Redis.from_url({url!r}).rpush({started!r}, "start")
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # never yields to the event loop
        pass
    return "computed"
"""


@pytest.fixture
def project(unique: str, tmp_path: Path) -> Iterator[App]:
    """An app module in ``tmp_path`` with a lease of 1.5 s (the test's short lease)."""
    servers.require("amqp")
    app = redis_app(unique, worker_lease_timeout=1.5)
    yield app
    Ledger(unique, "started").delete()
    app.close()


def write_project(app: App, unique: str, tmp_path: Path, pool: str) -> None:
    conf = app.conf
    (tmp_path / "proj.py").write_text(
        PROJECT.format(
            pool=pool,
            url=app.broker_url,
            amqp=servers.AMQP_URL,
            queue=conf.task_default_queue,
            prefix=conf.broker_transport_options["key_prefix"],
            lease=conf.worker_lease_timeout,
            started=Ledger(unique, "started").key,
        )
    )


def test_the_command_patches_before_the_app_and_libraries(
    pool: str, project: App, unique: str, tmp_path: Path
) -> None:
    write_project(project, unique, tmp_path, pool)
    with proc.worker(tmp_path, proc.env(), "-P", pool, "-c", "50") as worker:
        seen = project.send_task("green.inspect").get(timeout=20)
        # A warm shutdown exits 0 (it exited 120: a patched thread-local read while
        # the interpreter flushed the redirected stdout on its way out).
        assert worker.stop() == 0, worker.output
    assert seen["patched"] and seen["green"] == pool, "not patched when the app was imported"
    assert seen["now"]
    # redis-py's and kombu's (py-amqp's) sockets are the library's cooperative ones.
    expected = {"gevent": "gevent.", "eventlet": "eventlet."}[pool]
    assert seen["redis"].startswith(expected), seen
    assert seen["amqp"].startswith(expected), seen
    for warning in ("MonkeyPatchWarning", "imported before", "after import"):
        assert warning not in worker.output, worker.output


def test_a_task_that_never_yields_for_twice_the_lease_is_not_redelivered(
    pool: str, project: App, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The task computes for 3 s, twice the 1.5 s lease, without yielding once. A
    second consumer reaps expired leases every 0.1 s meanwhile: had the worker's
    lease lapsed, the reaper would have returned the message to the queue (and
    said so in its log) for it to run again."""
    caplog.set_level(logging.INFO, "taskq.broker.redis")
    write_project(project, unique, tmp_path, pool)
    started = Ledger(unique, "started")
    reaper = RedisBroker(
        servers.REDIS_URL,
        consumer_id=f"reaper-{unique}",
        options={"key_prefix": project.conf.broker_transport_options["key_prefix"]},
    )
    stop = threading.Event()

    def reap() -> None:
        while not stop.wait(0.1):
            reaper.heartbeat()  # returns messages of consumers whose lease ran out

    with proc.worker(tmp_path, proc.env(), "-P", pool, "-c", "10") as worker:
        thread = threading.Thread(target=reap, daemon=True)
        thread.start()
        try:
            result = project.send_task("green.compute", [3.0])
            assert result.get(timeout=30) == "computed", worker.output
        finally:
            stop.set()
            thread.join(5)
            reaper.close()
    returned = [r.getMessage() for r in caplog.records if "expired consumers" in r.getMessage()]
    assert returned == [], "the worker's lease lapsed while its task computed"
    assert started.entries() == ["start"]
    assert result.state == states.SUCCESS


def test_a_missing_library_names_the_extra(pool: str, tmp_path: Path) -> None:
    """With the library not importable, the worker refuses to start and says
    which extra to install."""
    app = redis_app("missing")
    (tmp_path / "proj.py").write_text(
        f"from taskq import App\napp = App('proj', broker={app.broker_url!r})\n"
    )
    hide = tmp_path / "hide"
    (hide / pool).mkdir(parents=True)
    (hide / pool / "__init__.py").write_text(f"raise ImportError('no {pool} here')\n")
    done = proc.run(
        tmp_path, proc.env({"PYTHONPATH": str(hide)}), "-A", "proj", "worker", "-P", pool
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"pip install 'taskq[{pool}]'" in done.stderr
    app.close()
