"""RabbitMQ holds a taskq worker to its prefetch window (issue 17, target 5).

RabbitMQ applies a consumer's ``basic.qos`` only when the consumer starts, so a
worker that consumed first and sent its qos after had no limit at all: with
30,000 tasks queued, the first worker took 27,280 and the others starved. Here two
worker processes share a 10,000-message backlog in a vhost of the test's own;
``rabbitmqctl`` shows each consumer's prefetch and each channel's unacked
messages, and both must stay within the window while both make progress.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import App
from taskq.worker.timing import Timing
from tests import proc, servers
from tests.waiting import wait_until

#: The window's largest size with the defaults (``taskq.worker.window``): the batch
#: of short tasks under a backlog (``Timing.batch_max``), and as much read ahead.
#: ``-P solo`` with multiplier 4 has a prefetch window of 4 below that.
BOUND = 2 * Timing().batch_max
BACKLOG = 10_000

APP = """
    import os, pathlib, time
    from taskq import App

    app = App("window", broker=os.environ["WINDOW_BROKER"], backend=None)
    ran = pathlib.Path(os.environ["WINDOW_DIR"]) / str(os.getpid())

    @app.task(name="window.work")
    def work():
        time.sleep(0.005)
        with ran.open("a") as out:
            out.write(".")
"""


def ctl(*args: str) -> list[list[str]]:
    """``rabbitmqctl`` rows, split on tabs."""
    done = subprocess.run(
        ["rabbitmqctl", *args, "--quiet", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line.split("\t") for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture
def vhost(unique: str) -> Iterator[str]:
    """A RabbitMQ vhost of this test's own: its queues and consumers are the only ones."""
    servers.require("amqp")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH (it reads the consumers' prefetch)")
    name = f"taskq-window-{unique}"
    subprocess.run(["rabbitmqctl", "add_vhost", name], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    yield name
    subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)


def ran(directory: Path) -> dict[str, int]:
    """Tasks run so far, per worker process."""
    return {p.name: p.stat().st_size for p in directory.iterdir()}


@pytest.mark.timeout(180)
def test_two_workers_share_a_backlog_each_within_its_window(vhost: str, tmp_path: Path) -> None:
    url = servers.AMQP_URL.rstrip("/") + "/" + vhost
    (tmp_path / "window_app.py").write_text(textwrap.dedent(APP))
    directory = tmp_path / "ran"
    directory.mkdir()
    producer = App("window", broker=url, backend=None)
    task = producer.task(name="window.work")(lambda: None)
    for start in range(0, BACKLOG, 1000):
        task.delay_many([()] * min(1000, BACKLOG - start))
    producer.close()
    environ = proc.env({"WINDOW_BROKER": url, "WINDOW_DIR": str(directory)})
    argv = [*proc.TASKQ, "-A", "window_app", "worker", "-P", "solo", "-l", "info"]
    workers = [proc.Proc(argv, tmp_path, environ) for _ in range(2)]
    try:
        for worker in workers:
            worker.wait_for("ready", 60)
        wait_until(lambda: len(ran(directory)) == 2, 60, "both workers running tasks")
        samples = []
        for _ in range(2):  # rabbitmqctl takes about a second a call
            consumers = [  # remote control has a consumer too, on its own queue
                row
                for row in ctl("list_consumers", "-p", vhost, "queue_name", "prefetch_count")
                if row[0] == "celery"
            ]
            channels = [
                row
                for row in ctl("list_channels", "vhost", "messages_unacknowledged")
                if row[0] == vhost
            ]
            queued = dict(ctl("list_queues", "-p", vhost, "name", "messages_ready"))["celery"]
            samples.append((consumers, channels, queued))
            assert len(consumers) == 2, consumers
            for _, prefetch in consumers:
                assert 0 < int(prefetch) <= BOUND, consumers
            for _, unacked in channels:
                assert int(unacked) <= BOUND, channels
            # Nothing like the whole backlog left the queue for one worker.
            assert int(queued) > 0
        first = ran(directory)
        wait_until(
            lambda: all(ran(directory)[pid] > first[pid] + 50 for pid in first),
            60,
            "both workers making progress",
        )
    finally:
        for worker in workers:
            worker.stop()
    assert all(count > 50 for count in ran(directory).values()), (ran(directory), samples)
