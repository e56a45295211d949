"""Real ``taskq worker`` subprocesses for the fault-injection suite."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import kombu

from taskq import App
from taskq.broker.envelope import decode_payload
from tests import proc
from tests.faults.faultproj import Config
from tests.faults.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.faults.faultproj"


def start_worker(
    config: Config,
    *args: str,
    extra_env: dict[str, str] | None = None,
    ready: bool = True,
) -> proc.Proc:
    """``taskq -A tests.faults.faultproj worker`` with ``config``; waits for "ready."."""
    environ = proc.env({**config.env(), **(extra_env or {})})
    command = [sys.executable, "-m", "taskq.cli", "-A", APP, "worker", "-l", "info", *args]
    worker = proc.Proc(command, ROOT, environ)
    if ready:
        worker.wait_for("ready.", timeout=30)
    return worker


def kill(worker: proc.Proc) -> None:
    """SIGKILL, no shutdown of any kind (the OOM killer, a power cut)."""
    if worker.popen.poll() is None:
        worker.popen.send_signal(signal.SIGKILL)
    worker.popen.wait(10)


def stop_all(workers: list[proc.Proc], timeout: float = 20.0) -> None:
    """Warm shutdown for all at once; SIGKILL whatever is still running after ``timeout``."""
    for worker in workers:
        if worker.popen.poll() is None:
            worker.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in workers:
        try:
            worker.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.popen.kill()
            worker.popen.wait()


@contextlib.contextmanager
def workers(config: Config, *argsets: tuple[str, ...]) -> Iterator[list[proc.Proc]]:
    started: list[proc.Proc] = []
    try:
        for args in argsets:
            started.append(start_worker(config, *args))
        yield started
    finally:
        stop_all(started)


class Supervisor:
    """Restarts a worker whenever it exits, as systemd's ``Restart=always`` would."""

    def __init__(self, config: Config, *args: str) -> None:
        self.config, self.args = config, args
        self.runs: list[proc.Proc] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            worker = start_worker(self.config, *self.args, ready=False)
            self.runs.append(worker)
            while worker.popen.poll() is None and not self._stop.is_set():
                time.sleep(0.05)

    @property
    def deaths(self) -> int:
        return sum(1 for w in self.runs if w.popen.poll() == -signal.SIGKILL)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        stop_all(self.runs)


def run_cli(config: Config, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return proc.run(ROOT, proc.env(config.env()), "-A", APP, *args, timeout=timeout)


def publish(app: App, ids: Iterable[str], seconds: float = 0.0) -> list[str]:
    """Send ``faults.work`` once per id (the id is the task id); return the ids sent."""
    sent: list[str] = []
    for task_id in ids:
        app.send_task("faults.work", kwargs={"seconds": seconds}, task_id=task_id)
        sent.append(task_id)
    return sent


def leases(server: PrivateRedis, prefix: str = "taskq:") -> dict[str, list[str]]:
    """Task ids each Redis consumer holds (in flight or in a landing list), by lease id."""
    client = server.client()
    held: dict[str, list[str]] = {}
    try:
        for key in client.scan_iter(f"{prefix}inflight:*"):
            lease_id = key.decode()[len(prefix) + len("inflight:") :]
            for entry in client.hvals(key):
                size, _, rest = entry.partition(b":")
                held.setdefault(lease_id, []).append(_task_id(rest[int(size) :]))
        for key in client.scan_iter(f"{prefix}landing:*"):
            lease_id = key.decode()[len(prefix) + len("landing:") :].rsplit(":", 1)[0]
            for payload in client.lrange(key, 0, -1):
                held.setdefault(lease_id, []).append(_task_id(payload))
    finally:
        client.close()
    return held


def wait_settled(server: PrivateRedis, timeout: float, prefix: str = "taskq:") -> None:
    """Nothing stuck: wait until no consumer holds a message (every one was acked or
    given back) and the queues are empty."""
    deadline = time.monotonic() + timeout
    while True:
        held = leases(server, prefix)
        if not any(held.values()):
            return
        assert time.monotonic() < deadline, f"still leased after {timeout}s: {held}"
        time.sleep(0.1)


def _task_id(payload: bytes) -> str:
    return str(decode_payload(payload).headers.get("id"))


AMQP_URL = os.environ.get("TASKQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def amqp_waiting(queue: str, url: str = AMQP_URL) -> int:
    """Messages ready in a RabbitMQ queue: after the workers stopped, anything left
    was never acknowledged (a stuck message comes back when its channel closes)."""
    with kombu.Connection(url) as conn:
        _, count, _ = conn.channel().queue_declare(queue, passive=True)
    return int(count)


def delete_amqp(*names: str, url: str = AMQP_URL) -> None:
    """Remove a test's queues and their same-named exchanges from the shared RabbitMQ."""
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        for name in names:
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.exchange_delete(name)
