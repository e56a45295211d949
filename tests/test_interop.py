"""Producers that are not taskq reach taskq workers: the raw Redis recipe from
docs/protocol.md, and kombu publishing the way Celery does on Redis and RabbitMQ."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import kombu
import pytest
import redis

from taskq import App
from taskq.testing import running_worker
from tests import servers


def celery_style_message(task_id: str, args: list[Any]) -> tuple[str, dict[str, Any]]:
    body = json.dumps(
        [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    headers = {
        "lang": "py",
        "task": "interop.add",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
    }
    return body, headers


def make_app(broker: str, unique: str) -> App:
    app = App(
        "interop", broker=broker, backend=servers.REDIS_URL, task_default_queue=f"interop-{unique}"
    )

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_raw_redis_producer_from_the_protocol_doc(redis_url: str, unique: str) -> None:
    app = make_app(redis_url, unique)
    queue = app.conf.task_default_queue
    task_id = str(uuid.uuid4())
    body, headers = celery_style_message(task_id, [2, 3])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }
    redis.Redis.from_url(redis_url).lpush(queue, json.dumps(envelope))
    with running_worker(app):
        assert app.AsyncResult(task_id).get(timeout=10) == 5
    app.close()


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_kombu_producer_as_celery_publishes(broker: str, unique: str) -> None:
    servers.require("redis")
    url = servers.REDIS_URL if broker == "redis" else servers.AMQP_URL
    if broker == "amqp":
        servers.require("amqp")
    app = make_app(url, unique)
    queue_name = app.conf.task_default_queue
    task_id = str(uuid.uuid4())
    body, headers = celery_style_message(task_id, [40, 2])
    with running_worker(app):  # the worker declares the queue and its binding first
        with kombu.Connection(url) as conn:
            exchange = kombu.Exchange(queue_name, "direct")
            queue = kombu.Queue(queue_name, exchange, routing_key=queue_name)
            conn.Producer().publish(
                body,
                exchange=exchange,
                routing_key=queue_name,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                correlation_id=task_id,
                delivery_mode=2,
                declare=[queue],
            )
        assert app.AsyncResult(task_id).get(timeout=10) == 42
    app.close()
