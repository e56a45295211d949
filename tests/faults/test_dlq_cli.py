"""``taskq dlq list | requeue ID...|--all | purge`` on each broker with a dead-letter queue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from taskq.broker import dlq
from taskq.broker.base import Broker, Delivery, QueueSpec
from taskq.errors import BrokerError
from taskq.message import Envelope
from tests import servers
from tests.faults.cluster import AMQP_URL, delete_amqp, run_cli, start_worker, stop_all
from tests.faults.faultproj import Config, make_app
from tests.faults.redis_server import PrivateRedis
from tests.waiting import wait_until


@pytest.fixture(params=["redis", "sqlite", "amqp"])
def config(
    request: pytest.FixtureRequest, make_config: Callable[..., Config], tmp_path: Path
) -> Iterator[Config]:
    if request.param == "redis":
        server = PrivateRedis(tmp_path / "redis")
        server.start()
        yield make_config(server.url)
        server.stop()
    elif request.param == "sqlite":
        yield make_config(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    else:
        servers.require("amqp")
        dead = f"faults-dead-{uuid.uuid4().hex[:10]}"
        made = make_config(AMQP_URL, transport_options={"dead_letter_queue": dead})
        yield made
        delete_amqp(made.queue, dead)


def fetch_all(broker: Broker, queue: str, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(50):
        got += broker.fetch([queue], count - len(got), 0.2)
        if len(got) >= count:
            break
    assert len(got) == count
    return got


def park(broker: Broker, queue: str, count: int) -> None:
    for delivery in fetch_all(broker, queue, count):
        broker.dead_letter(delivery, f"reason of {delivery.envelope.headers['id']}")
    broker.fetch([queue], 1, 0.05)  # RabbitMQ: acks go out from the consumer's thread


@pytest.mark.timeout(60)
def test_list_requeue_and_purge(config: Config) -> None:
    app = make_app(config)
    broker = app.new_broker("cli-test")
    broker.declare([QueueSpec(config.queue)])
    for n in range(3):
        headers = {"id": f"task-{n}", "task": "faults.work"}
        broker.publish(Envelope(b"[[], {}, {}]", "application/json", headers=headers), config.queue)
    park(broker, config.queue, 3)

    listed = run_cli(config, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "3 message(s)." in listed.stdout
    assert "faults.work[task-1]" in listed.stdout and "reason of task-1" in listed.stdout
    entries = [
        json.loads(line) for line in run_cli(config, "dlq", "list", "--json").stdout.splitlines()
    ]
    assert [e["task_id"] for e in entries] == ["task-0", "task-1", "task-2"]
    assert all(e["queue"] == config.queue and e["when"] != "-" for e in entries)

    requeued = run_cli(config, "dlq", "requeue", entries[1]["id"])
    assert (requeued.returncode, requeued.stdout.strip()) == (0, "Requeued 1 message(s).")
    [back] = fetch_all(broker, config.queue, 1)
    assert back.envelope.headers["id"] == "task-1"
    assert not any(k.startswith("x-taskq-") for k in back.envelope.headers)
    broker.ack([back])

    missing = run_cli(config, "dlq", "requeue", entries[1]["id"])  # already requeued
    assert missing.returncode == 1 and "not in the dead-letter queue" in missing.stderr
    assert run_cli(config, "dlq", "requeue").returncode == 2  # IDs or --all

    assert run_cli(config, "dlq", "requeue", "--all").stdout.strip() == "Requeued 2 message(s)."
    park(broker, config.queue, 2)
    purged = run_cli(config, "dlq", "purge", "--force")
    assert purged.stdout.strip() == "Purged 2 dead-lettered message(s)."
    assert run_cli(config, "dlq", "list").stdout.strip() == "The dead-letter queue is empty."
    broker.close()
    app.close()


@pytest.mark.timeout(90)
def test_requeue_all_moves_each_parked_message_once_while_a_worker_refuses_them(
    config: Config,
) -> None:
    """Issue 12, item 10: with a worker running that dead-letters every requeued
    message again, ``requeue --all`` moves the messages parked when it began, once
    each (RabbitMQ bounced one 59 times for as long as the command ran)."""
    count = 30
    app = make_app(config)
    broker = app.new_broker("cli-bounce")
    broker.declare([QueueSpec(config.queue)])
    for n in range(count):
        headers = {"id": f"bad-{n}", "task": "faults.work"}
        broker.publish(Envelope(b"{not json", "application/json", headers=headers), config.queue)
    worker = start_worker(config, "-P", "solo")
    try:
        wait_until(lambda: len(dlq.parked(broker, 1000)) == count, 30, f"{count} parked")
        requeued = run_cli(config, "dlq", "requeue", "--all")
        assert requeued.stdout.strip() == f"Requeued {count} message(s).", requeued.stderr
        wait_until(lambda: len(dlq.parked(broker, 1000)) == count, 30, "parked again, once each")
        assert sorted(p.task_id or "" for p in dlq.parked(broker, 1000)) == sorted(
            f"bad-{n}" for n in range(count)
        )
        assert worker.popen.poll() is None
    finally:
        stop_all([worker])
        broker.close()
        app.close()


def test_an_unreachable_broker_exits_69(make_config: Callable[..., Config]) -> None:
    out = run_cli(make_config("redis://127.0.0.1:1/0"), "dlq", "list")
    assert out.returncode == 69 and "unreachable" in out.stderr


class NoDeadLetters(Broker):
    def declare(self, queues: Sequence[QueueSpec]) -> None: ...
    def publish(self, envelope: Envelope, queue: str, **options: object) -> None: ...  # type: ignore[override]
    def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        return []

    def ack(self, deliveries: Sequence[Delivery]) -> None: ...
    def requeue(self, deliveries: Sequence[Delivery]) -> None: ...
    def dead_letter(self, delivery: Delivery, reason: str) -> None: ...
    def purge(self, queue: str) -> int:
        return 0


def test_a_broker_without_a_dead_letter_queue_says_so() -> None:
    broker = NoDeadLetters("thirdparty://x", consumer_id="c")
    for action in (dlq.parked, dlq.requeue, dlq.purge):
        with pytest.raises(BrokerError, match="keeps no dead-letter queue"):
            action(broker)
