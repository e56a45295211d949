"""``taskq worker --metrics-port``: a real worker on the real Redis, scraped over HTTP.

Counts must equal what was sent in every pool; under prefork the tasks run in the
children, recycled ones too (``--max-tasks-per-child 1``), and no events are on.
"""

from __future__ import annotations

import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import redis

from taskq import App
from tests import servers
from tests.proc import TASKQ, Proc, env
from tests.waiting import wait_until

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.slow  # starts workers

PROJECT = """
import os
from taskq import App

app = App(
    "metricsproj",
    broker=os.environ["M_REDIS"],
    backend=os.environ["M_REDIS"],
    task_default_queue=os.environ["M_QUEUE"],
    broker_transport_options={"key_prefix": os.environ["M_PREFIX"]},
    result_backend_transport_options={"key_prefix": os.environ["M_PREFIX"]},
)


@app.task
def add(x, y):
    return x + y


@app.task
def boom(x):
    raise ValueError(x)


@app.task
def die():
    # Kills its process the first time only: the worker redelivers it.
    import redis

    if redis.Redis.from_url(os.environ["M_REDIS"]).incr(os.environ["M_PREFIX"] + "died") == 1:
        os._exit(1)
    return "second time"


@app.task
def hold():
    import time

    time.sleep(60)  # until revoked with terminate=True
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read())


def parse(body: bytes) -> Samples:
    text = body.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Project:
    def __init__(self, cwd: Path, unique: str) -> None:
        self.cwd = cwd
        self.prefix = f"taskq-test-{unique}:"
        self.environ = env(
            {"M_REDIS": servers.REDIS_URL, "M_QUEUE": f"q-{unique}", "M_PREFIX": self.prefix}
        )
        self.app = App(
            "metricsproj",
            broker=servers.REDIS_URL,
            backend=servers.REDIS_URL,
            task_default_queue=f"q-{unique}",
            broker_transport_options={"key_prefix": self.prefix},
            result_backend_transport_options={"key_prefix": self.prefix},
        )

    def worker(self, *args: str) -> tuple[Proc, str]:
        """A worker started as a user starts it, and its metrics URL (from its log)."""
        proc = Proc(
            [*TASKQ, "-A", "proj", "worker", "-l", "info", "--metrics-port", "0", *args],
            self.cwd,
            self.environ,
        )
        line = proc.wait_for("Metrics at ", timeout=30)
        proc.wait_for("ready.", timeout=30)
        return proc, line.split("Metrics at ", 1)[1].strip()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    servers.require("redis")
    (tmp_path / "proj.py").write_text(PROJECT)
    made = Project(tmp_path, uuid.uuid4().hex[:10])
    try:
        yield made
    finally:
        made.app.close()
        client = redis.Redis.from_url(servers.REDIS_URL)
        keys = list(client.scan_iter(f"{made.prefix}*"))
        if keys:
            client.delete(*keys)


@pytest.mark.parametrize(
    "pool",
    [
        ["-P", "prefork", "-c", "2"],
        ["-P", "prefork", "-c", "2", "--max-tasks-per-child", "1"],
        ["-P", "threads", "-c", "2"],
        ["-P", "solo"],
        ["-P", "asyncio", "-c", "10"],
        ["-P", "gevent", "-c", "10"],
    ],
    ids=["prefork", "prefork-recycled", "threads", "solo", "asyncio", "gevent"],
)
def test_counts_equal_what_was_sent(project: Project, pool: list[str]) -> None:
    if pool[1] == "gevent":
        pytest.importorskip("gevent")
    proc, url = project.worker(*pool)
    try:
        ok, bad = 14, 6
        for i in range(ok):
            project.app.send_task("proj.add", (i, 1))
        for i in range(bad):
            project.app.send_task("proj.boom", (i,))

        def settled() -> bool:
            # A child counts a task before its parent hears it ended: the gauges of
            # what the worker holds reach 0 a moment after the counts are complete.
            samples = scrape(url)
            return (
                value(samples, "taskq_worker_tasks_total", task="proj.add", state="succeeded")
                + value(samples, "taskq_worker_tasks_total", task="proj.boom", state="failed")
                >= ok + bad
                and value(samples, "taskq_worker_active_tasks") == 0
                and value(samples, "taskq_worker_reserved_tasks") == 0
                and value(samples, "taskq_worker_prefetched_messages") == 0
            )

        wait_until(settled, 60, "every task counted and none held")
        samples = scrape(url)
    finally:
        code = proc.stop()
    assert code == 0, proc.output
    added = {"task": "proj.add"}
    assert value(samples, "taskq_worker_tasks_total", **added, state="succeeded") == ok
    assert value(samples, "taskq_worker_tasks_total", task="proj.boom", state="failed") == bad
    assert value(samples, "taskq_worker_tasks_total", **added, state="failed") == 0
    assert value(samples, "taskq_worker_task_runtime_seconds_count", **added) == ok
    assert value(samples, "taskq_worker_task_runtime_seconds_bucket", **added, le="+Inf") == ok
    assert value(samples, "taskq_worker_task_runtime_seconds_count", task="proj.boom") == bad
    assert value(samples, "taskq_worker_active_tasks") == 0
    assert value(samples, "taskq_worker_reserved_tasks") == 0
    info = [k for k in samples if k[0] == "taskq_worker_info"]
    assert len(info) == 1 and ("pool", pool[1]) in info[0][1]
    # The worker's private metrics files went with it.
    assert not list(Path(tempfile.gettempdir()).glob(f"taskq-metrics-{proc.popen.pid}-*"))


def test_lost_processes_and_revoked_tasks_are_counted(project: Project) -> None:
    """The outcomes the worker, not the child, decides: the child died under the
    task (counted, then the redelivery runs), a revoked task is never run, a running
    one is terminated."""
    revoked = project.app.send_task("proj.add", (1, 1))
    project.app.control.revoke(revoked.id)
    project.app.send_task("proj.die")
    proc, url = project.worker("-P", "prefork", "-c", "2")
    try:

        def counted() -> bool:
            found = scrape(url)
            return (
                value(found, "taskq_worker_tasks_total", task="proj.die", state="succeeded") == 1
                and value(found, "taskq_worker_tasks_total", task="proj.add", state="revoked") == 1
            )

        wait_until(counted, 60, "the redelivered and the revoked task counted")
        held = project.app.send_task("proj.hold")
        wait_until(lambda: value(scrape(url), "taskq_worker_active_tasks") == 1, 30, "hold running")
        project.app.control.revoke(held.id, terminate=True)

        def terminated() -> bool:
            found = scrape(url)
            return (
                value(found, "taskq_worker_tasks_total", task="proj.hold", state="revoked") == 1
                and value(found, "taskq_worker_active_tasks") == 0
            )

        wait_until(terminated, 30, "the terminated task counted")
        found = scrape(url)
    finally:
        proc.stop()
    assert value(found, "taskq_worker_tasks_total", task="proj.die", state="lost") == 1
    assert value(found, "taskq_worker_tasks_total", task="proj.add", state="succeeded") == 0
    assert value(found, "taskq_worker_task_runtime_seconds_count", task="proj.die") == 1
    assert value(found, "taskq_worker_active_tasks") == 0


def test_a_port_in_use_stops_start_up_with_what_to_do(project: Project) -> None:
    first, url = project.worker("-P", "solo")
    try:
        port = url.rsplit(":", 1)[1].split("/")[0]
        second = Proc(
            [*TASKQ, "-A", "proj", "worker", "-P", "solo", "--metrics-port", port],
            project.cwd,
            project.environ,
        )
        assert second.popen.wait(30) != 0
        assert "Cannot serve metrics on 127.0.0.1:" in second.output
        assert "Choose another --metrics-port" in second.output
    finally:
        first.stop()


def test_the_setting_turns_it_on(project: Project) -> None:
    (project.cwd / "proj.py").write_text(
        PROJECT + "\napp.conf.worker_metrics_port = 0\napp.conf.worker_metrics_host = 'localhost'\n"
    )
    proc = Proc([*TASKQ, "-A", "proj", "worker", "-P", "solo"], project.cwd, project.environ)
    try:
        line = proc.wait_for("Metrics at ", timeout=30)
        url = line.split("Metrics at ", 1)[1].strip()
        assert url.startswith(("http://127.0.0.1:", "http://[::1]:"))
        proc.wait_for("ready.", timeout=30)
        assert value(scrape(url), "taskq_worker_concurrency") == 1
    finally:
        proc.stop()


def test_fleet_metrics_from_a_real_workers_events(project: Project) -> None:
    """The dashboard's side: FleetMetrics fed by an EventReceiver while a prefork
    worker with -E runs tasks sent with task_send_sent_event."""
    from taskq.events import EventReceiver
    from taskq.metrics.fleet import FleetMetrics

    fleet = FleetMetrics()
    # The events exchange is shared by everything on this Redis: only ours count.
    ours = {f"metrics-{uuid.uuid4()}" for _ in range(8)}

    def observe(event: dict[str, object]) -> None:
        if event.get("uuid") in ours:
            fleet.observe(event)

    receiver = EventReceiver(lambda: kombu.Connection(servers.REDIS_URL), observe)
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(stop, 0.1), daemon=True)
    thread.start()
    assert receiver.ready.wait(10)
    project.app.conf.task_send_sent_event = True
    proc, _ = project.worker("-P", "prefork", "-c", "2", "-E")
    try:
        ids = sorted(ours)
        for i, task_id in enumerate(ids[:5]):
            project.app.send_task("proj.add", (i, 1), task_id=task_id)
        for i, task_id in enumerate(ids[5:]):
            project.app.send_task("proj.boom", (i,), task_id=task_id)

        def counted() -> bool:
            found = parse(fleet.render()[0])
            return (
                value(found, "taskq_tasks_total", task="proj.add", state="succeeded") == 5
                and value(found, "taskq_tasks_total", task="proj.boom", state="failed") == 3
            )

        wait_until(counted, 30, "the fleet metrics to count every task")
    finally:
        proc.stop()
        stop.set()
        thread.join(5)
    found = parse(fleet.render()[0])
    for name, count in (("proj.add", 5), ("proj.boom", 3)):
        assert value(found, "taskq_tasks_total", task=name, state="sent") == count
        assert value(found, "taskq_tasks_total", task=name, state="started") == count
        assert value(found, "taskq_task_wait_seconds_count", task=name) == count
        assert value(found, "taskq_task_runtime_seconds_count", task=name) == count
    assert fleet.tracked == 0
