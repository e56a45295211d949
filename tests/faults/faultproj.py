"""The app the fault-injection workers run (``taskq -A tests.faults.faultproj worker``).

Configured from ``FAULT_*`` environment variables (see ``Config``), so each test
starts workers with its own broker, queue, lease and ledger. Every task appends
to the ledger, a Redis list on a server no test ever faults: a ``start`` event
when it begins and a ``done`` event just before it returns, each with the task
id, this id's attempt number (counted in the ledger) and the process id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import redis

from taskq import App


@dataclasses.dataclass(frozen=True)
class Config:
    broker_url: str
    queue: str
    ledger_url: str
    ledger_key: str
    backend_url: str | None = None
    lease: float = 3.0
    max_attempts: int = 5
    transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    backend_max_sleep_ms: int = 10000
    shutdown_timeout: float = 30.0

    def env(self) -> dict[str, str]:
        """The environment a worker subprocess needs to build the same app."""
        out = {
            "TASKQ_BROKER_URL": self.broker_url,
            "FAULT_QUEUE": self.queue,
            "FAULT_LEDGER_URL": self.ledger_url,
            "FAULT_LEDGER_KEY": self.ledger_key,
            "FAULT_LEASE": str(self.lease),
            "FAULT_MAX_ATTEMPTS": str(self.max_attempts),
            "FAULT_TRANSPORT_OPTIONS": json.dumps(self.transport_options),
            "FAULT_BACKEND_MAX_SLEEP_MS": str(self.backend_max_sleep_ms),
            "FAULT_SHUTDOWN_TIMEOUT": str(self.shutdown_timeout),
        }
        if self.backend_url:
            out["TASKQ_RESULT_BACKEND"] = self.backend_url
        return out

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        return cls(
            broker_url=env.get("TASKQ_BROKER_URL", "memory://"),
            queue=env.get("FAULT_QUEUE", "faults"),
            ledger_url=env.get("FAULT_LEDGER_URL", "redis://127.0.0.1:6379/0"),
            ledger_key=env.get("FAULT_LEDGER_KEY", "taskq-faults-ledger"),
            backend_url=env.get("TASKQ_RESULT_BACKEND"),
            lease=float(env.get("FAULT_LEASE", "3")),
            max_attempts=int(env.get("FAULT_MAX_ATTEMPTS", "5")),
            transport_options=json.loads(env.get("FAULT_TRANSPORT_OPTIONS", "{}")),
            backend_max_sleep_ms=int(env.get("FAULT_BACKEND_MAX_SLEEP_MS", "10000")),
            shutdown_timeout=float(env.get("FAULT_SHUTDOWN_TIMEOUT", "30")),
        )


_ledger: tuple[int, redis.Redis] | None = None


def ledger_client(url: str) -> redis.Redis:
    """One client per process (a forked prefork child makes its own)."""
    global _ledger
    if _ledger is None or _ledger[0] != os.getpid():
        _ledger = (os.getpid(), redis.Redis.from_url(url, socket_timeout=10))
    return _ledger[1]


def record(config: Config, task_id: str, event: str) -> None:
    client = ledger_client(config.ledger_url)
    attempt = 0
    if event == "start":
        attempt = int(client.hincrby(config.ledger_key + ":attempts", task_id, 1))
    entry = {"id": task_id, "event": event, "attempt": attempt, "pid": os.getpid()}
    client.rpush(config.ledger_key, json.dumps({**entry, "t": time.time()}))


def make_app(config: Config) -> App:
    app = App(
        "faults",
        broker=config.broker_url,
        backend=config.backend_url,
        task_default_queue=config.queue,
        worker_lease_timeout=config.lease,
        task_max_delivery_attempts=config.max_attempts,
        broker_transport_options=config.transport_options,
        result_backend_max_sleep_between_retries_ms=config.backend_max_sleep_ms,
        worker_shutdown_timeout=config.shutdown_timeout,
        task_ignore_result=config.backend_url is None,
    )

    @app.task(name="faults.work", bind=True)
    def work(self: Any, seconds: float = 0.0) -> str:
        task_id = str(self.request.id)
        record(config, task_id, "start")
        time.sleep(seconds)
        record(config, task_id, "done")
        return task_id

    @app.task(name="faults.suicide", bind=True)
    def suicide(self: Any) -> None:
        record(config, str(self.request.id), "start")
        os.kill(os.getpid(), signal.SIGKILL)  # a segfaulting C extension, an OOM kill

    return app


app = make_app(Config.from_env())
