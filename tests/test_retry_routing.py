"""A retry goes where the task came from and keeps how it was sent, as Celery's does:
the queue (not the default one), the priority, the time limits, the expiry and the
headers its producer added. On every broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq import App
from taskq.testing import running_worker
from tests import servers

BROKERS = ["redis", "amqp", "sqlite"]


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, unique: str, tmp_path: Path) -> Iterator[App]:
    settings: dict[str, Any] = {}
    if request.param == "sqlite":
        broker = backend = f"sqlite:///{tmp_path / 'taskq.sqlite3'}"
    else:
        servers.require("redis")
        backend = servers.REDIS_URL
        if request.param == "redis":
            broker = servers.REDIS_URL
            settings["broker_transport_options"] = {"key_prefix": f"taskq-test-{unique}:"}
        else:
            servers.require("amqp")
            broker, settings["task_queue_max_priority"] = servers.AMQP_URL, 9
    app = App("retries", broker=broker, backend=backend, task_default_queue=f"q-{unique}",
              worker_lease_timeout=10.0, **settings)  # fmt: skip
    yield app
    app.close()
    if request.param == "redis":
        client = redis.Redis.from_url(servers.REDIS_URL)
        for key in client.scan_iter(match=f"*{unique}*"):
            client.delete(key)
        client.close()


def test_a_retry_keeps_its_queue_priority_limits_expiry_and_headers(app: App, unique: str) -> None:
    attempts: list[dict[str, Any]] = []

    @app.task(bind=True, name="retries.twice", max_retries=2)
    def twice(self: Any) -> int:
        request = self.request
        attempts.append(
            {
                "queue": request.delivery_info.get("routing_key"),
                "priority": request.delivery_info.get("priority"),
                "limits": (request.time_limit, request.soft_time_limit),
                "expires": request.expires,
                "tenant": request.headers.get("tenant"),
            }
        )
        if request.retries < 2:
            self.retry(countdown=0)
        return request.retries

    other = f"other-{unique}"
    result = twice.apply_async(
        queue=other, priority=5, time_limit=30, soft_time_limit=20, expires=600,
        headers={"tenant": "acme"},
    )  # fmt: skip
    # The worker consumes both queues: a retry to the default one would run too.
    with running_worker(app, queues=[app.conf.task_default_queue, other]):
        assert result.get(timeout=20) == 2
    first = attempts[0]
    assert first["queue"] == other and first["expires"] is not None
    assert attempts == [first, first, first]
    assert (first["priority"], first["limits"], first["tenant"]) == (5, (30, 20), "acme")


def test_retry_options_given_to_retry_win(app: App, unique: str) -> None:
    seen: list[str | None] = []

    @app.task(bind=True, name="retries.moved")
    def moved(self: Any) -> None:
        seen.append(self.request.delivery_info.get("routing_key"))
        if self.request.retries == 0:
            self.retry(countdown=0, queue=f"third-{unique}")

    result = moved.apply_async(queue=f"other-{unique}")
    queues = [f"other-{unique}", f"third-{unique}"]
    with running_worker(app, queues=queues):
        result.get(timeout=20)
    assert seen == queues
