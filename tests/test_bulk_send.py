"""Bulk sends on Redis: ``group(...).apply_async()`` and ``Task.delay_many`` publish
through the broker's ``publish_many``, lose nothing when a publish fails part-way,
and put on the queue what Celery's consumers read as Celery's own messages."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from taskq import App, Task, chain, group
from taskq.broker.base import Broker
from taskq.broker.envelope import decode_payload
from taskq.errors import BrokerError
from taskq.testing import running_worker
from tests import servers

NO_WAIT = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.0, "interval_max": 0.0}

#: The headers Celery 5.7 sends, which taskq sends, no more and no fewer.
CELERY_HEADERS = {
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
}  # fmt: skip
EMPTY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.fixture
def app(unique: str) -> Iterator[App]:
    servers.require("redis")
    prefix = f"taskq-test-{unique}:"
    app = App(
        "bulk",
        broker=servers.REDIS_URL,
        backend=servers.REDIS_URL,
        broker_transport_options={"key_prefix": prefix},
        result_backend_transport_options={"key_prefix": prefix},
        task_default_queue=f"q-{unique}",
        task_publish_retry_policy=NO_WAIT,
    )
    yield app
    app.close()
    client = redis.Redis.from_url(servers.REDIS_URL)
    keys = [*client.scan_iter(match=f"{prefix}*"), *client.scan_iter(match=f"q-{unique}*")]
    if keys:
        client.delete(*keys)
    client.close()


def add_task(app: App) -> Task[[int, int], int]:
    @app.task(name="bulk.add")
    def add(x: int, y: int) -> int:
        return x + y

    return add


def record_calls(monkeypatch: pytest.MonkeyPatch, broker: Broker, method: str) -> list[Any]:
    """Let ``broker.<method>`` run, noting the first argument of each call."""
    calls: list[Any] = []
    real = getattr(broker, method)

    def spy(first: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(first)
        real(first, *args, **kwargs)

    monkeypatch.setattr(broker, method, spy)
    return calls


def queued_ids(app: App) -> list[str]:
    client = redis.Redis.from_url(servers.REDIS_URL)
    raw = client.lrange(app.conf.task_default_queue, 0, -1)
    client.close()
    return [decode_payload(payload).headers["id"] for payload in raw]


@pytest.mark.timeout(120)
def test_a_group_of_two_thousand_goes_out_in_two_publishes_and_every_member_runs(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = add_task(app)
    batches = record_calls(monkeypatch, app.broker, "publish_many")
    singles = record_calls(monkeypatch, app.broker, "publish")
    result = group(add.s(i, i) for i in range(2000)).apply_async()
    assert [len(batch) for batch in batches] == [1000, 1000] and singles == []
    first, last = batches[0][0][0].headers, batches[1][-1][0].headers
    assert (first["group"], first["group_index"]) == (result.id, 0)
    assert (last["group"], last["group_index"]) == (result.id, 1999)
    with running_worker(app, concurrency=8):
        assert result.get(timeout=90) == [2 * i for i in range(2000)]


def test_delay_many_sends_one_task_per_argument_tuple(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = add_task(app)
    batches = record_calls(monkeypatch, app.broker, "publish_many")
    results = add.delay_many((i, 1) for i in range(1500))
    assert [len(batch) for batch in batches] == [1000, 500]
    assert queued_ids(app)[::-1] == [r.id for r in results]  # LPUSH: the newest first
    headers = batches[0][0][0].headers
    assert headers["group"] is None and headers["group_index"] is None
    with running_worker(app, concurrency=8):
        assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(1500)]


def test_a_chunk_that_failed_part_way_is_sent_again_and_nothing_is_lost(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = add_task(app)
    real = app.broker.publish_many
    attempts: list[int] = []

    def drops_the_connection_once(items: Any) -> None:
        attempts.append(len(items))
        if len(attempts) == 1:
            real(items[:400])  # Redis took these, then the connection was lost
            raise BrokerError("Connection lost while publishing")
        real(items)

    monkeypatch.setattr(app.broker, "publish_many", drops_the_connection_once)
    result = group(add.s(i, i) for i in range(1500)).apply_async()
    assert attempts == [1000, 1000, 500]  # the first chunk retried whole, then the rest
    counts = collections.Counter(queued_ids(app))
    assert set(counts) == {r.id for r in result.results}
    assert sorted(counts.values()) == [1] * 1100 + [2] * 400  # at least once, never lost
    with running_worker(app, concurrency=8):
        assert result.get(timeout=60) == [2 * i for i in range(1500)]


def test_a_bulk_send_raises_once_the_retry_policy_is_spent(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = add_task(app)

    def refuses(items: Any) -> None:
        raise BrokerError("Redis is down")

    monkeypatch.setattr(app.broker, "publish_many", refuses)
    with pytest.raises(BrokerError, match=r"1000 task messages .*after 3 attempt\(s\)"):
        add.delay_many([(1, 2)] * 1000)
    with pytest.raises(
        BrokerError, match=r"bulk\.add\[.*after 1 attempt\(s\) in .*: Redis is down"
    ):
        group(add.s(1, 2), add.s(3, 4)).apply_async(retry=False)


def test_delayed_members_and_workflows_in_a_group_keep_their_own_path(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = add_task(app)
    batches = record_calls(monkeypatch, app.broker, "publish_many")
    singles = record_calls(monkeypatch, app.broker, "publish")
    result = group(
        add.s(1, 1), add.s(2, 2).set(countdown=0.5), chain(add.s(3, 3), add.s(4)), add.s(5, 5)
    ).apply_async()
    assert [len(batch) for batch in batches] == [2]  # the two plain calls
    assert len(singles) == 2  # the delayed call, and the chain's first task
    with running_worker(app, concurrency=4):
        assert result.get(timeout=30) == [2, 4, 10, 10]


def test_messages_sent_in_bulk_are_read_by_kombu_as_celery_sent_them(app: App, unique: str) -> None:
    add = add_task(app)
    queue = app.conf.task_default_queue
    single = add.apply_async((1, 2), task_id=f"single-{unique}")
    grouped = group(add.s(3, 4), add.s(5, 6)).apply_async()
    many = add.delay_many([(7, 8)])
    with kombu.Connection(servers.REDIS_URL) as conn:
        channel = conn.default_channel  # kombu's Redis transport, as a Celery worker reads
        read = [channel.basic_get(queue, no_ack=True) for _ in range(4)]
        assert channel.basic_get(queue, no_ack=True) is None
    expected = [
        (single.id, [1, 2], None, None),
        (grouped.results[0].id, [3, 4], grouped.id, 0),
        (grouped.results[1].id, [5, 6], grouped.id, 1),
        (many[0].id, [7, 8], None, None),
    ]
    for message, (task_id, args, group_id, index) in zip(read, expected, strict=True):
        assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
        assert set(message.headers) == CELERY_HEADERS
        headers = message.headers
        assert (headers["task"], headers["id"], headers["root_id"]) == (
            "bulk.add",
            task_id,
            task_id,
        )
        assert (headers["group"], headers["group_index"]) == (group_id, index)
        assert headers["argsrepr"] == repr(tuple(args)) and headers["kwargsrepr"] == "{}"
        assert message.properties["correlation_id"] == task_id
        assert message.decode() == [args, {}, EMPTY_EMBED]
