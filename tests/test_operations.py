"""Seeing and steering a running fleet with the real tools (issue 14).

One fleet per broker (Redis, RabbitMQ): a prefork, a threads and an asyncio
taskq worker, started as a user starts them. Against it run an unmodified
``celery status`` / ``inspect ping`` / ``inspect active`` / ``control
rate_limit`` / ``control enable_events`` / ``events --dump`` (with a tiny Celery
app on the same broker) and Flower, read through its HTTP API; and taskq's own
``status``, ``inspect``, ``control`` and ``events --dump``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests import servers
from tests.proc import TASKQ, Proc, env
from tests.waiting import wait_until

pytest.importorskip("celery")
pytest.importorskip("flower")

pytestmark = pytest.mark.slow  # starts taskq workers, Celery's tools and Flower

CELERY = [sys.executable, "-m", "celery", "-A", "celery_proj"]
POOLS = {"prefork": ["-c", "2"], "threads": ["-c", "2"], "asyncio": ["-c", "10"]}

PROJECT = """
import os
import redis
from taskq import App

app = App(
    "opsproj",
    broker=os.environ["OPS_BROKER"],
    backend=os.environ["OPS_BACKEND"],
    task_default_queue=os.environ["OPS_QUEUE"],
    broker_transport_options={{"key_prefix": os.environ["OPS_PREFIX"]}},
    result_backend_transport_options={{"key_prefix": os.environ["OPS_PREFIX"]}},
)


@app.task
def add(x, y):
    return x + y


@app.task
def held(n):
    # Runs until the test lets it finish (a Redis key), so it is seen active.
    client = redis.Redis.from_url(os.environ["OPS_BACKEND"])
    client.blpop(os.environ["OPS_PREFIX"] + "release", timeout=30)
    client.rpush(os.environ["OPS_PREFIX"] + "release", "go")
    return n
"""

CELERY_PROJECT = """
import os
from celery import Celery

app = Celery("compat", broker=os.environ["OPS_BROKER"])
"""


@dataclass
class Fleet:
    broker: str
    cwd: Path
    environ: dict[str, str]
    names: dict[str, str]  # pool -> node name
    prefix: str

    def celery(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CELERY, *args], cwd=self.cwd, env=self.environ, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def taskq(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TASKQ, "-A", "proj", *args], cwd=self.cwd, env=self.environ,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    @property
    def destination(self) -> str:
        return ",".join(self.names.values())

    def send(self, task: str, *args: Any) -> str:
        out = self.taskq("call", task, "--args", json.dumps(list(args)))
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def release(self) -> None:
        redis.Redis.from_url(servers.REDIS_URL).rpush(f"{self.prefix}release", "go")


@pytest.fixture(scope="module", params=["redis", "amqp"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    servers.require("redis")
    servers.require(request.param)
    unique = uuid.uuid4().hex[:10]
    cwd = tmp_path_factory.mktemp(f"ops-{request.param}")
    (cwd / "proj.py").write_text(PROJECT.format())
    (cwd / "celery_proj.py").write_text(CELERY_PROJECT)
    broker = servers.REDIS_URL if request.param == "redis" else servers.AMQP_URL
    prefix = f"taskq-test-{unique}:"
    environ = env(
        {
            "OPS_BROKER": broker,
            "OPS_BACKEND": servers.REDIS_URL,
            "OPS_QUEUE": f"q-{unique}",
            "OPS_PREFIX": prefix,
            "PYTHONPATH": str(cwd),
        }
    )
    names = {pool: f"{pool}-{unique}@localhost" for pool in POOLS}
    procs = [
        Proc(
            [*TASKQ, "-A", "proj", "worker", "-l", "info", "-P", pool, *args, "-n", names[pool]],
            cwd,
            environ,
        )
        for pool, args in POOLS.items()
    ]
    try:
        for proc in procs:
            proc.wait_for("Remote control: listening", timeout=30)
        yield Fleet(broker, cwd, environ, names, prefix)
    finally:
        for proc in procs:
            proc.stop()
        client = redis.Redis.from_url(servers.REDIS_URL)
        keys = list(client.scan_iter(match=f"*{unique}*", count=1000))
        if keys:
            client.delete(*keys)
        if request.param == "amqp":
            servers.delete_amqp_queues(unique)


def test_celery_status_and_ping_list_every_pool(fleet: Fleet) -> None:
    status = fleet.celery("status", "--timeout", "2")
    for name in fleet.names.values():
        assert f"->  {name}: OK" in status.stdout, status.stdout + status.stderr
    ping = fleet.celery("inspect", "ping", "-d", fleet.destination, "--timeout", "5")
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.count("pong") == 3, ping.stdout


def test_celery_control_enables_events_and_sets_rate_limits(fleet: Fleet) -> None:
    enable = fleet.celery("control", "enable_events", "-d", fleet.destination, "--timeout", "5")
    assert enable.stdout.count("task events") == 3, enable.stdout + enable.stderr
    limit = fleet.celery(
        "control", "rate_limit", "proj.add", "600/m", "-d", fleet.destination, "--timeout", "5"
    )
    assert limit.stdout.count("new rate limit set successfully") == 3, limit.stdout + limit.stderr
    registered = fleet.taskq("inspect", "registered", "--json", "-d", fleet.destination, "-t", "5")
    replies = json.loads(registered.stdout)
    assert all("proj.add [rate_limit=600/m]" in r for r in replies.values()), replies


def test_celery_inspect_active_shows_running_tasks(fleet: Fleet) -> None:
    ids = [fleet.send("proj.held", n) for n in range(3)]
    try:
        seen: set[str] = set()

        def active() -> bool:
            out = fleet.celery("inspect", "active", "-d", fleet.destination, "--timeout", "5")
            seen.update(i for i in ids if i in out.stdout)
            return bool(seen)

        wait_until(active, 30, "a held task in celery inspect active")
        ours = fleet.taskq("inspect", "active", "--json", "-d", fleet.destination, "-t", "5")
        running = [t for tasks in json.loads(ours.stdout).values() for t in tasks]
        assert any(t["id"] in ids and t["name"] == "proj.held" for t in running), running
    finally:
        fleet.release()


def test_celery_events_dump_shows_taskq_task_events(fleet: Fleet) -> None:
    fleet.celery("control", "enable_events", "-d", fleet.destination, "--timeout", "5")
    dump = Proc([*CELERY, "events", "--dump"], fleet.cwd, fleet.environ)
    try:
        dump.wait_for("starting capture", timeout=20)
        dump.wait_for("heartbeat", timeout=20)  # it listens: a receiver only sees what follows
        task_id = fleet.send("proj.add", 2, 3)
        line = dump.wait_for(f"task succeeded: proj.add({task_id})", timeout=20)
    finally:
        dump.stop()
    assert "result=5" in line and "runtime=" in line
    assert any(name in line for name in fleet.names.values())


def test_flower_lists_the_workers_and_shows_a_task(fleet: Fleet) -> None:
    fleet.celery("control", "enable_events", "-d", fleet.destination, "--timeout", "5")
    port = _free_port()
    flower = Proc(
        [*CELERY, "flower", f"--port={port}", "--address=127.0.0.1", "--inspect_timeout=5000"],
        fleet.cwd,
        {**fleet.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        flower.wait_for("Visit me at", timeout=30)
        workers: dict[str, Any] = {}

        def listed() -> bool:
            workers.update(_get(f"{base}/api/workers?refresh=1") or {})
            return all(name in workers for name in fleet.names.values())

        wait_until(listed, 30, "Flower listing the taskq workers")
        for pool, name in fleet.names.items():
            stats = workers[name]["stats"]
            assert stats["pool"]["implementation"] == f"taskq:{pool}"
            assert any(t.startswith("proj.add") for t in workers[name]["registered"])
        task_id = fleet.send("proj.add", 20, 22)
        info: dict[str, Any] = {}

        def succeeded() -> bool:
            info.update(_get(f"{base}/api/task/info/{task_id}") or {})
            return info.get("state") == "SUCCESS"

        wait_until(succeeded, 30, f"Flower showing task {task_id} succeeded")
        assert info["result"] == "42" and info["name"] == "proj.add"
        assert isinstance(info["runtime"], float) and info["worker"] in fleet.names.values()
    finally:
        flower.stop()


def test_taskq_status_inspect_and_events_dump(fleet: Fleet) -> None:
    status = fleet.taskq("status", "-t", "2")
    for name in fleet.names.values():
        assert f"->  {name}: OK" in status.stdout, status.stdout + status.stderr
    stats = json.loads(fleet.taskq("inspect", "stats", "--json", "-d", fleet.destination).stdout)
    assert sorted(s["pool"]["implementation"] for s in stats.values()) == [
        "taskq:asyncio", "taskq:prefork", "taskq:threads"
    ]  # fmt: skip
    dump = Proc([*TASKQ, "-A", "proj", "events", "--dump"], fleet.cwd, fleet.environ)
    try:
        dump.wait_for('"type": "worker-heartbeat"', timeout=20)
        task_id = fleet.send("proj.add", 1, 2)
        line = dump.wait_for(f'"uuid": "{task_id}"', timeout=20)
        while '"task-succeeded"' not in line:
            line = dump.wait_for(f'"uuid": "{task_id}"', timeout=20)
    finally:
        dump.stop()
    event = json.loads(line)
    assert event["result"] == "3" and event["hostname"] in fleet.names.values()
    unknown = fleet.taskq("control", "pool_grw", "-d", fleet.destination)
    assert unknown.returncode != 0 and "Did you mean 'pool_grow'?" in unknown.stderr


def test_sqlite_says_what_to_use_instead(tmp_path: Path) -> None:
    (tmp_path / "proj.py").write_text("from taskq import App\napp = App('lite')\n")
    out = subprocess.run(
        [*TASKQ, "-A", "proj", "status"], cwd=tmp_path, env=env(), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 69
    assert "cannot (the SQLite broker" in out.stderr and "redis:// or amqp://" in out.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None
