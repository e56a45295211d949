"""Helpers of the worker tests: apps on the shared Redis under a unique prefix and
a ledger that every process can append to."""

from __future__ import annotations

import os
from typing import Any

import redis

from taskq import App
from tests import servers
from tests.waiting import wait_until


def redis_app(unique: str, **settings: Any) -> App:
    """An app whose queue and keys belong to this test alone (never flush the server)."""
    servers.require("redis")
    settings.setdefault("task_default_queue", f"q-{unique}")
    settings.setdefault("worker_lease_timeout", 10.0)
    return App(
        "workertests",
        broker=servers.REDIS_URL,
        backend=servers.REDIS_URL,
        broker_transport_options={"key_prefix": f"taskq-test-{unique}:"},
        **settings,
    )


class Ledger:
    """A Redis list: task runs append to it from any process (prefork children
    open their own connection), the test reads it."""

    def __init__(self, unique: str, name: str = "ledger") -> None:
        self.key = f"taskq-test-{unique}:{name}"
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            self._client, self._pid = redis.Redis.from_url(servers.REDIS_URL), os.getpid()
        return self._client

    def append(self, value: object) -> None:
        self.client.rpush(self.key, str(value))

    def entries(self) -> list[str]:
        return [v.decode() for v in self.client.lrange(self.key, 0, -1)]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        """The entries once there are at least ``count``."""
        wait_until(lambda: len(self.entries()) >= count, timeout, f"{count} ledger entries")
        return self.entries()

    def delete(self) -> None:
        self.client.delete(self.key)


class Gate:
    """A Redis flag tasks wait on from any process. (A ``multiprocessing.Event`` is
    no good when a waiter may be killed: its ``set`` then waits for the dead one.)"""

    def __init__(self, unique: str, name: str = "gate") -> None:
        self._ledger = Ledger(unique, name)

    def open(self) -> None:
        self._ledger.append("open")

    def wait(self, timeout: float = 30.0) -> None:
        self._ledger.wait_for(1, timeout)

    def delete(self) -> None:
        self._ledger.delete()
