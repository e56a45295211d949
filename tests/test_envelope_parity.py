"""taskq sends what Celery 5.7 sends: the same headers, properties and body layout,
and on Redis the same binding entry, so a Celery worker or tool sees no difference.
Celery, then taskq, send the same call to a queue nobody consumes; the raw messages
are compared."""

from __future__ import annotations

import base64
import json
from typing import Any

import kombu
import redis

from taskq import App
from tests import servers
from tests.interop import celery_app


def send_both(broker: str, queue: str) -> None:
    celery = celery_app.make(broker, servers.REDIS_URL, queue)
    taskq = App("parity", broker=broker, backend=servers.REDIS_URL, task_default_queue=queue)
    try:
        for app in (celery, taskq):
            app.send_task("parity.add", (1, 2), {"z": 3}, expires=600)
    finally:
        celery.close()
        taskq.close()


def test_redis_envelopes_and_bindings_match_celerys(unique: str) -> None:
    servers.require("redis")
    queue = f"parity-{unique}"
    client = redis.Redis.from_url(servers.REDIS_URL)
    try:
        send_both(servers.REDIS_URL, queue)
        raw = client.lrange(queue, 0, -1)  # LPUSH: taskq's (sent last) first
        taskq, celery = (json.loads(payload) for payload in raw)
        for message in (taskq, celery):
            message["body"] = json.loads(base64.b64decode(message["body"]))
        assert set(taskq) == set(celery)
        assert set(taskq["headers"]) == set(celery["headers"])
        # Celery's AMQP expiration property (RabbitMQ drops the message at its expiry,
        # recording nothing): taskq's worker records REVOKED instead (docs/protocol.md).
        assert set(taskq["properties"]) == set(celery["properties"]) - {"expiration"}
        assert taskq["properties"]["delivery_info"] == celery["properties"]["delivery_info"]
        assert set(taskq["body"][2]) == set(celery["body"][2])
        for name in ("replaced_task_nesting", "stamped_headers", "stamps"):
            assert taskq["headers"][name] == celery["headers"][name]
        assert taskq["properties"]["reply_to"]  # a reply address, as Celery sends one
        # Both declared the queue the same way: one binding entry between them.
        assert client.smembers(f"_kombu.binding.{queue}") == {
            f"{queue}\x06\x16\x06\x16{queue}".encode()
        }
    finally:
        for key in client.scan_iter(match=f"*{unique}*"):
            client.delete(key)
        client.close()


def test_amqp_envelopes_match_celerys(unique: str) -> None:
    servers.require("redis")
    servers.require("amqp")
    queue = f"parity-{unique}"
    got: list[Any] = []
    try:
        send_both(servers.AMQP_URL, queue)
        with kombu.Connection(servers.AMQP_URL) as conn:
            channel = conn.channel()
            got = [channel.basic_get(queue, no_ack=True) for _ in range(2)]
    finally:
        with kombu.Connection(servers.AMQP_URL) as conn:
            conn.default_channel.queue_delete(queue)
    celery, taskq = got  # FIFO: Celery's first
    assert set(taskq.headers) == set(celery.headers)
    wanted = ("correlation_id", "reply_to", "delivery_mode", "content_type", "content_encoding")
    assert [name for name in wanted if name in taskq.properties] == [
        name for name in wanted if name in celery.properties
    ]
    assert json.loads(taskq.body)[2].keys() == json.loads(celery.body)[2].keys()
