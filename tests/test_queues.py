"""Queues are declared the same way by every process of an app: a producer, a worker
and beat, each in its own process, from the app's settings (taskq.queues). On
RabbitMQ a second declaration with other arguments fails, so these would fail if
any of them declared from its own defaults; on Redis the producer writes the
binding kombu writes, so Celery producers reach taskq's queues by exchange."""

from __future__ import annotations

from pathlib import Path

import kombu
import pytest
import redis
from amqp.exceptions import PreconditionFailed

from taskq import App
from taskq.testing import running_worker
from tests import proc, servers
from tests.queues_app import make, settings_for

pytestmark = pytest.mark.slow  # workers and beat in subprocesses

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("kind", ["priority", "quorum", "dead-letter"])
def test_producer_worker_and_beat_declare_rabbitmq_queues_alike(
    kind: str, unique: str, tmp_path: Path
) -> None:
    servers.require("amqp")
    queue = f"q-{unique}"
    backend = f"sqlite:///{tmp_path / 'results.sqlite3'}"  # no shared beat lock needed
    env = proc.env(
        {
            "PYTHONPATH": str(ROOT),
            "QUEUES_KIND": kind,
            "QUEUES_BROKER": servers.AMQP_URL,
            "QUEUES_BACKEND": backend,
            "QUEUES_QUEUE": queue,
        }
    )
    worker = proc.Proc([*proc.TASKQ, "-A", "tests.queues_app", "worker", "-P", "threads",
                        "-l", "info"], ROOT, env)  # fmt: skip
    beat = None
    app = make(kind, servers.AMQP_URL, backend, queue)
    try:
        worker.wait_for("ready.")  # the worker declared the queue first
        result = app.tasks["queues.ping"].apply_async(priority=5)  # then this producer
        assert result.get(timeout=20) == "pong"
        beat = proc.Proc([*proc.TASKQ, "-A", "tests.queues_app", "beat", "-l", "info"], ROOT, env)
        try:  # then beat, and its task ran
            worker.wait_for("Task queues.tick[", timeout=30)
            worker.wait_for("succeeded", timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nbeat said:\n{beat.output}") from None
    finally:
        if beat is not None:
            beat.stop()
        worker.stop()
        app.close()
    # The queue has the arguments: a plain declaration of it is refused.
    with kombu.Connection(servers.AMQP_URL) as conn, pytest.raises(PreconditionFailed):
        kombu.Queue(queue, kombu.Exchange(queue, "direct"), routing_key=queue)(
            conn.channel()
        ).declare()
    with kombu.Connection(servers.AMQP_URL) as conn:
        conn.default_channel.queue_delete(f"{queue}-dead")


def test_settings_of_each_kind_declare_what_they_say(unique: str) -> None:
    queue = f"q-{unique}"
    for kind, expected in [
        ("priority", {"x-max-priority": 10}),
        ("quorum", {"x-queue-type": "quorum"}),
        ("dead-letter", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}-dead"}),
    ]:  # fmt: skip
        app = App("q", broker="memory://", task_default_queue=queue, **settings_for(kind, queue))
        assert app.producer.broker.queues[queue].queue_arguments() == expected


def test_redis_producer_writes_the_binding_celery_writes(unique: str) -> None:
    servers.require("redis")
    exchange, queue = f"media-{unique}", f"feeds-{unique}"
    app = App(
        "bindings",
        broker=servers.REDIS_URL,
        backend=servers.REDIS_URL,
        task_default_queue=queue,
        task_queues=[kombu.Queue(queue, kombu.Exchange(exchange, "topic"), routing_key="media.#")],
        broker_transport_options={"key_prefix": f"taskq-test-{unique}:"},
    )

    @app.task(name="bindings.echo")
    def echo(value: str) -> str:
        return value

    client = redis.Redis.from_url(servers.REDIS_URL)
    try:
        echo.delay("from taskq")  # the first publish to the queue writes its binding
        ours = client.smembers(f"_kombu.binding.{exchange}")
        with kombu.Connection(servers.REDIS_URL) as conn:
            # What kombu (Celery's transport) writes for the same declaration.
            kombu.Queue(
                f"{queue}-k", kombu.Exchange(f"{exchange}-k", "topic"), routing_key="media.#"
            )(conn.default_channel).declare()
            theirs = client.smembers(f"_kombu.binding.{exchange}-k")
            assert {m.replace(f"{queue}-k".encode(), queue.encode()) for m in theirs} == ours
            # A kombu producer routes by exchange and routing key into taskq's queue.
            out = app.producer.prepare("bindings.echo", ("from kombu",), {}, {})
            topic = kombu.Exchange(exchange, "topic")
            topic(conn.default_channel).declare()  # as Celery's producer declares it
            conn.Producer().publish(
                out.envelope.body,
                exchange=topic,
                routing_key="media.video",
                headers=out.envelope.headers,
                content_type=out.envelope.content_type,
                content_encoding=out.envelope.content_encoding,
            )
        with running_worker(app):
            assert app.AsyncResult(out.id).get(timeout=10) == "from kombu"
    finally:
        app.close()
        for key in client.scan_iter(match=f"*{unique}*"):
            client.delete(key)
        client.close()
