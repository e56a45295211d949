"""``Broker.queue_depths``: ready, delayed and dead-lettered counts per queue, on
each broker that keeps queues (what the dashboard's overview and /metrics show)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import App
from taskq.broker.base import QueueDepth
from tests import servers

pytestmark = pytest.mark.slow  # servers


def _app(kind: str, unique: str, tmp_path: Path) -> App:
    queue = f"q-{unique}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'taskq.sqlite3'}"
        return App("depths", broker=url, backend=url, task_default_queue=queue)
    if kind == "redis":
        servers.require("redis")
        return App(
            "depths",
            broker=servers.REDIS_URL,
            broker_transport_options={"key_prefix": f"taskq-test-{unique}:"},
            task_default_queue=queue,
        )
    servers.require("amqp")
    return App(
        "depths",
        broker=servers.AMQP_URL,
        broker_transport_options={"dead_letter_queue": f"dq-{unique}"},
        task_default_queue=queue,
    )


@pytest.fixture(params=["redis", "sqlite", "amqp"])
def app(request: pytest.FixtureRequest, unique: str, tmp_path: Path) -> Iterator[App]:
    app = _app(request.param, unique, tmp_path)
    yield app
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(servers.REDIS_URL)
        for queue in (f"q-{unique}", f"other-{unique}"):
            client.delete(queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9)))
        client.delete(f"taskq-test-{unique}:-", *client.scan_iter(f"taskq-test-{unique}:*"))
    app.close()


def test_ready_delayed_and_dead_lettered_are_counted_per_queue(app: App, unique: str) -> None:
    queue, other = f"q-{unique}", f"other-{unique}"
    broker = app.broker
    for i in range(3):
        app.send_task("t.add", (i, i))
    app.send_task("t.add", (9, 9), priority=9)
    app.send_task("t.add", (1, 1), queue=other)
    app.send_task("t.add", (0, 0), countdown=3600)
    consumer = app.new_broker(f"depths-{unique}")
    try:
        (delivery,) = consumer.fetch([other], 1, 5.0)
        consumer.dead_letter(delivery, "for the count")
    finally:
        consumer.close()
    depths = broker.queue_depths([queue, other, f"gone-{unique}"])
    if app.conf.broker_url.startswith("amqp"):
        # RabbitMQ: ready from the queue itself; delayed and dead are mixed across
        # queues in the delay levels and the dead-letter queue.
        assert depths[queue] == QueueDepth(4, None, None)
        assert depths[other] == QueueDepth(0, None, None)
        assert depths[f"gone-{unique}"] == QueueDepth(0, None, None)
        assert broker.dead_letter_count() == 1  # type: ignore[attr-defined]
        return
    assert depths[queue] == QueueDepth(ready=4, delayed=1, dead=0)
    assert depths[other] == QueueDepth(ready=0, delayed=0, dead=1)
    assert depths[f"gone-{unique}"] == QueueDepth(0, 0, 0)
