"""RedisBroker.fetch(read_ahead=True): the next batch is leased while the caller works;
and a worker that uses it.

Real Redis; every test uses its own key prefix and queue and deletes its keys.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis

from taskq.broker.base import Delivery, Envelope
from taskq.broker.redis import RedisBroker, scripts
from taskq.testing import running_worker
from tests.faults.proxy import RedisProxy, script_call
from tests.leases import keys, leased
from tests.worker_support import redis_app


@pytest.fixture
def queue(unique: str) -> str:
    return f"q-{unique}"


def publish(broker: RedisBroker, queue: str, count: int) -> None:
    items = [
        (Envelope(b"{}", "application/json", headers={"id": str(n)}), queue, None)
        for n in range(count)
    ]
    broker.publish_many(items)


def ids(deliveries: list[Delivery]) -> list[str]:
    return [str(d.envelope.headers["id"]) for d in deliveries]


def fetch(broker: RedisBroker, queue: str, count: int) -> list[Delivery]:
    return broker.fetch([queue], count, 0, read_ahead=True)


def test_a_full_fetch_leases_the_next_batch_and_hands_it_over_next(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, queue: str
) -> None:
    broker = make_broker()
    publish(broker, queue, 10)
    first = fetch(broker, queue, 4)
    assert ids(first) == ["0", "1", "2", "3"]
    broker.ack(first)
    assert leased(raw, broker) == 4  # the next four, read ahead
    assert raw.llen(queue) == 2
    assert ids(fetch(broker, queue, 4)) == ["4", "5", "6", "7"]
    assert ids(fetch(broker, queue, 4)) == ["8", "9"]  # not full: nothing read ahead
    assert fetch(broker, queue, 4) == []


def test_without_read_ahead_a_fetch_leases_only_its_batch(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, queue: str
) -> None:
    broker = make_broker()
    publish(broker, queue, 10)
    broker.ack(broker.fetch([queue], 4, 0))
    assert leased(raw, broker) == 0
    assert raw.llen(queue) == 6


def test_a_smaller_fetch_gets_the_rest_of_a_read_ahead_next_time(
    make_broker: Callable[..., RedisBroker], queue: str
) -> None:
    broker = make_broker()
    publish(broker, queue, 10)
    seen = ids(fetch(broker, queue, 4))
    for size in (2, 1, 3, 4):
        got = fetch(broker, queue, size)
        assert len(got) <= size
        seen += ids(got)
    assert seen == [str(n) for n in range(10)]


def test_close_gives_back_what_was_read_ahead(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, queue: str
) -> None:
    broker = make_broker("first")
    publish(broker, queue, 10)
    broker.ack(fetch(broker, queue, 4))
    inflight = keys(raw, broker).inflight
    broker.close()
    assert raw.hlen(inflight) == 0
    other = make_broker("second")
    # At once, in order: given back at the head, not left for the lease to run out.
    assert ids(other.fetch([queue], 10, 0)) == [str(n) for n in range(4, 10)]


def test_a_lost_read_ahead_reply_loses_and_duplicates_nothing(
    proxy: RedisProxy, make_broker: Callable[..., RedisBroker], raw: redis.Redis, queue: str
) -> None:
    broker = make_broker(url=proxy.url)
    publish(broker, queue, 20)
    raw.script_load(scripts.FETCH)  # so that the first fetch is one call
    # The connection drops with the read-ahead's reply unread (its script ran): the
    # next fetch asks again under the same tags and gets those messages.
    lost = proxy.fault("lose reply", script_call(scripts.FETCH), after=1)
    first = fetch(broker, queue, 5)
    lost.wait()  # the first fetch's call went through; the read-ahead's reply did not
    broker.ack(first)
    seen = ids(first)
    for _ in range(10):
        got = fetch(broker, queue, 5)
        broker.ack(got)
        seen += ids(got)
    assert sorted(seen, key=int) == [str(n) for n in range(20)]
    assert leased(raw, broker) == 0 and raw.llen(queue) == 0


# -- a worker -----------------------------------------------------------------------


def leased_by_anyone(raw: redis.Redis, unique: str) -> int:
    keys = raw.scan_iter(match=f"taskq-test-{unique}:inflight:*", count=1000)
    return sum(int(raw.hlen(key)) for key in keys)


def test_a_stopped_worker_leaves_nothing_leased(unique: str, raw: redis.Redis) -> None:
    """A worker draining short tasks leases past its prefetch window and reads
    ahead; stopped (warm) mid-drain, it leaves nothing leased: what it did not run
    is back in the queue at once, not after the lease runs out."""
    app = redis_app(unique, task_ignore_result=True)
    ran: list[int] = []
    enough = threading.Event()

    @app.task(name="ahead.noop")
    def noop() -> None:
        ran.append(1)
        if len(ran) >= 3000:
            enough.set()

    total = 20_000
    noop.delay_many([()] * total)
    peak = 0
    try:
        with running_worker(app, pool="solo"):
            while not enough.wait(0.002):
                peak = max(peak, leased_by_anyone(raw, unique))
        assert leased_by_anyone(raw, unique) == 0
        assert len(ran) + raw.llen(app.conf.task_default_queue) == total
        assert peak > 8  # past the prefetch window of 1 x 4, and read ahead
    finally:
        app.close()
