"""RedisBroker against a real Redis: delivery, leases, delayed store, DLQ, kombu interop.

Every test uses its own queue names and key prefix and deletes its keys, since
other runs share the server (never FLUSHDB). Waits are on conditions, with timeouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from taskq.broker.base import Delivery, Envelope, QueueSpec
from taskq.broker.envelope import MALFORMED_CONTENT_TYPE, PRIORITY_SEP, encode_payload, list_key
from taskq.broker.redis import RedisBroker, scripts
from taskq.errors import BrokerError
from tests.faults.proxy import RedisProxy, names, script_call
from tests.faults.redis_server import PrivateRedis
from tests.leases import connections, keys, lease_id, leased


@dataclass
class Env:
    url: str
    unique: str
    prefix: str
    queue: str
    raw: redis.Redis
    make: Callable[..., RedisBroker]


@pytest.fixture
def env(redis_url: str, unique: str) -> Iterator[Env]:
    prefix = f"taskq-test-{unique}:"
    brokers: list[RedisBroker] = []

    def make(name: str = "c", url: str | None = None, **options: Any) -> RedisBroker:
        broker = RedisBroker(
            url or redis_url,
            consumer_id=f"{name}-{unique}",
            options={"key_prefix": prefix, **options},
        )
        brokers.append(broker)
        return broker

    raw = redis.Redis.from_url(redis_url)
    yield Env(redis_url, unique, prefix, f"q-{unique}", raw, make)
    for broker in brokers:
        broker.close()
    # Queue lists, kombu bindings and taskq keys all carry `unique` in their names.
    keys = list(raw.scan_iter(match=f"*{unique}*", count=1000))
    if keys:
        raw.delete(*keys)
    raw.close()


def message(n: int, **headers: Any) -> Envelope:
    return Envelope(
        body=b'{"n": %d}' % n,
        content_type="application/json",
        headers={"id": str(n), **headers},
        properties={"correlation_id": str(n)},
    )


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.envelope.headers["id"] for d in deliveries]


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def server_time(raw: redis.Redis) -> float:
    seconds, micros = raw.time()
    return seconds + micros / 1e6


def wait_lease_expired(env: Env, broker: RedisBroker) -> None:
    deadline = env.raw.zscore(f"{env.prefix}consumers", lease_id(env.raw, broker))
    assert deadline is not None
    wait_until(lambda: server_time(env.raw) > deadline)


def drain(broker: RedisBroker, queues: list[str], timeout: float = 0.0) -> list[Delivery]:
    out: list[Delivery] = []
    while batch := broker.fetch(queues, 100, timeout):
        out += batch
    return out


# -- publish, fetch, ack ---------------------------------------------------------------


def test_round_trip_and_ack(env: Env) -> None:
    broker = env.make()
    broker.publish(message(1, task="t.add"), env.queue)

    [delivery] = broker.fetch([env.queue], 10, 1.0)
    assert delivery.queue == env.queue
    assert delivery.delivery_count == 1
    assert delivery.envelope.body == b'{"n": 1}'
    assert delivery.envelope.content_type == "application/json"
    assert delivery.envelope.headers == {"id": "1", "task": "t.add"}
    assert delivery.envelope.properties["correlation_id"] == "1"
    assert leased(env.raw, broker) == 1

    broker.ack([delivery])
    assert leased(env.raw, broker) == 0
    assert broker.fetch([env.queue], 10, 0) == []


def test_fifo(env: Env) -> None:
    broker = env.make()
    for n in range(20):
        broker.publish(message(n), env.queue)
    got: list[Delivery] = []
    while batch := broker.fetch([env.queue], 7, 0):
        got += batch
    assert ids(got) == [str(n) for n in range(20)]
    assert len({d.tag for d in got}) == 20


def test_priorities_use_kombu_lists_and_order(env: Env) -> None:
    broker = env.make()
    for n, priority in enumerate([9, 6, 5, 3, 0, 2]):
        broker.publish(message(n), env.queue, priority=priority)
    q = env.queue
    assert env.raw.llen(q) == 2  # priorities 0 and 2
    assert env.raw.llen(f"{q}{PRIORITY_SEP}3") == 2  # 5 and 3
    assert env.raw.llen(f"{q}{PRIORITY_SEP}6") == 1
    assert env.raw.llen(f"{q}{PRIORITY_SEP}9") == 1

    got = broker.fetch([q], 10, 0)
    # Lower first, FIFO within a step: (0, 2), (5, 3), 6, 9.
    assert ids(got) == ["4", "5", "2", "3", "1", "0"]
    assert [d.envelope.properties["priority"] for d in got] == [0, 2, 5, 3, 6, 9]


def test_priority_property_used_when_no_argument(env: Env) -> None:
    broker = env.make()
    envelope = Envelope(b"x", "text/plain", properties={"priority": 7})
    broker.publish(envelope, env.queue)
    assert env.raw.llen(list_key(env.queue, 7)) == 1


def test_batch_fetch_is_one_script_call(proxy: RedisProxy, env: Env) -> None:
    broker = env.make(url=proxy.url)
    broker.publish_many([(message(n), env.queue, None) for n in range(10)])
    env.raw.script_load(scripts.FETCH)  # as any earlier fetch on this server did
    with proxy.recording() as sent:
        batch = broker.fetch([env.queue], 7, 0)
    assert len(batch) == 7
    assert names(sent) == ["EVALSHA"] and script_call(scripts.FETCH)(sent[-1])
    assert ids(broker.fetch([env.queue], 7, 0)) == ["7", "8", "9"]


def test_publish_many_groups_lists_and_keeps_order(env: Env) -> None:
    broker = env.make()
    other = f"q2-{env.unique}"
    items = [
        (message(n), env.queue if n % 2 else other, 6 if n % 3 == 0 else None) for n in range(12)
    ]
    broker.publish_many(items)
    got = drain(broker, [env.queue, other])
    assert sorted(ids(got), key=int) == [str(n) for n in range(12)]
    for queue in (env.queue, other):
        for high in (False, True):
            mine = [
                int(d.envelope.headers["id"])
                for d in got
                if d.queue == queue and (d.envelope.properties["priority"] == 6) == high
            ]
            assert mine == sorted(mine)


def test_fetch_timeout_returns_empty(env: Env) -> None:
    broker = env.make()
    started = time.monotonic()
    assert broker.fetch([env.queue], 10, 0.5) == []
    assert 0.45 <= time.monotonic() - started < 2.0


def test_blocking_fetch_returns_promptly(env: Env) -> None:
    broker, producer = env.make("consumer"), env.make("producer")
    result: list[list[Delivery]] = []
    returned_at: list[float] = []

    def consume() -> None:
        result.append(broker.fetch([env.queue], 10, 10.0))
        returned_at.append(time.monotonic())

    thread = threading.Thread(target=consume)
    thread.start()
    wait_until(lambda: any(c["cmd"] == "blmove" for c in connections(env.raw, broker)))
    published_at = time.monotonic()
    producer.publish(message(1), env.queue)
    thread.join(10)
    assert ids(result[0]) == ["1"]
    assert returned_at[0] - published_at < 0.2


def test_other_queues_found_within_poll_interval(env: Env) -> None:
    broker, producer = env.make("consumer"), env.make("producer")
    second = f"q2-{env.unique}"
    result: list[list[Delivery]] = []
    thread = threading.Thread(
        target=lambda: result.append(broker.fetch([env.queue, second], 10, 10.0))
    )
    thread.start()
    time.sleep(0.05)  # let it block on the first queue (either way the bound holds)
    published_at = time.monotonic()
    producer.publish(message(1), second, priority=9)
    thread.join(10)
    assert ids(result[0]) == ["1"] and result[0][0].queue == second
    assert time.monotonic() - published_at < broker.settings.poll_interval + 0.5


def test_queues_are_served_in_rotation(env: Env) -> None:
    broker = env.make()
    second = f"q2-{env.unique}"
    broker.publish_many([(message(n), q, None) for n in range(10) for q in (env.queue, second)])
    first_queues = [broker.fetch([env.queue, second], 1, 0)[0].queue for _ in range(4)]
    assert first_queues == [env.queue, second, env.queue, second]


def test_rotation_over_many_queues_serves_each_in_turn(env: Env) -> None:
    # More queues than rotations the broker once cached (64): each fetch still starts
    # at the next queue, priority lists of every queue come after all plain ones.
    broker = env.make()
    queues = [f"{env.queue}-{i}" for i in range(100)]
    broker.publish_many([(message(i), q, None) for i, q in enumerate(queues)])
    broker.publish(message(100), queues[-1], priority=9)  # served after every priority 0
    got = [broker.fetch(queues, 1, 0)[0] for _ in range(100)]
    assert [d.queue for d in got] == queues
    assert ids(got) == [str(i) for i in range(100)]
    assert ids(broker.fetch(queues, 5, 0)) == ["100"]


def test_requeue_puts_back_at_the_head(env: Env) -> None:
    broker = env.make()
    for n in range(3):
        broker.publish(message(n), env.queue)
    first = broker.fetch([env.queue], 2, 0)
    broker.requeue(first)
    again = broker.fetch([env.queue], 3, 0)
    assert ids(again) == ["0", "1", "2"]
    assert [d.delivery_count for d in again] == [1, 1, 1]
    assert leased(env.raw, broker) == 3


def test_purge_counts_every_priority_list(env: Env) -> None:
    broker = env.make()
    for n, priority in enumerate([0, 3, 9]):
        broker.publish(message(n), env.queue, priority=priority)
    assert broker.purge(env.queue) == 3
    assert broker.fetch([env.queue], 10, 0) == []
    assert broker.purge(env.queue) == 0


# -- leases ------------------------------------------------------------------------


def test_dead_consumer_messages_come_back(env: Env) -> None:
    dead, live = env.make("dead", lease_timeout=1.0), env.make("live", lease_timeout=1.0)
    for n in range(3):
        dead.publish(message(n), env.queue)
    taken = dead.fetch([env.queue], 2, 0)
    dead_keys, dead_lease = keys(env.raw, dead), lease_id(env.raw, dead)
    # A BLMOVE whose fetch script never ran (the process died in between).
    landing = f"{dead_keys.landing_prefix}{env.queue}"
    env.raw.hset(dead_keys.landings, landing, env.queue)
    env.raw.lmove(env.queue, landing, "RIGHT", "LEFT")

    live.heartbeat()
    assert live.fetch([env.queue], 10, 0) == []  # the lease is still valid
    wait_lease_expired(env, dead)
    live.heartbeat()

    back = {d.envelope.headers["id"]: d for d in live.fetch([env.queue], 10, 0)}
    assert set(back) == {"0", "1", "2"}
    assert {n: d.delivery_count for n, d in back.items()} == {"0": 2, "1": 2, "2": 1}
    assert not env.raw.exists(dead_keys.inflight, dead_keys.landings, landing)
    assert env.raw.zscore(dead_keys.consumers, dead_lease) is None

    live.ack(list(back.values()))
    assert not env.raw.exists(f"{env.prefix}deliveries")  # counters go with the ack
    dead.ack(taken)  # late ack of a lost lease: harmless
    assert live.fetch([env.queue], 10, 0) == []


@pytest.mark.timeout(30)
def test_live_consumer_keeps_its_message(env: Env) -> None:
    worker, other = env.make("worker", lease_timeout=1.0), env.make("other", lease_timeout=1.0)
    worker.publish(message(1), env.queue)
    [delivery] = worker.fetch([env.queue], 1, 0)
    tick = threading.Event()
    until = time.monotonic() + 3 * worker.settings.lease_timeout
    while time.monotonic() < until:
        worker.heartbeat()  # the worker calls it every lease_timeout / 3
        other.heartbeat()
        assert other.fetch([env.queue], 10, 0) == []
        tick.wait(0.25)
    worker.ack([delivery])
    other.heartbeat()
    assert other.fetch([env.queue], 10, 0) == []


def test_racing_reapers_restore_exactly_once(env: Env) -> None:
    dead = env.make("dead", lease_timeout=1.0)
    reapers = [env.make(f"reaper{i}", lease_timeout=1.0) for i in range(4)]
    dead.publish_many([(message(n), env.queue, None) for n in range(50)])
    assert len(dead.fetch([env.queue], 50, 0)) == 50
    wait_lease_expired(env, dead)

    barrier = threading.Barrier(len(reapers))

    def reap(broker: RedisBroker) -> None:
        barrier.wait()
        broker.heartbeat()

    threads = [threading.Thread(target=reap, args=(r,)) for r in reapers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert env.raw.llen(env.queue) == 50
    back = drain(reapers[0], [env.queue])
    assert sorted(ids(back), key=int) == [str(n) for n in range(50)]
    assert {d.delivery_count for d in back} == {2}


def test_lost_lease_is_not_requeued_or_dead_lettered_twice(env: Env) -> None:
    slow, reaper = env.make("slow", lease_timeout=1.0), env.make("reaper", lease_timeout=1.0)
    slow.publish(message(1), env.queue)
    leased = slow.fetch([env.queue], 1, 0)
    wait_lease_expired(env, slow)
    reaper.heartbeat()
    slow.requeue(leased)
    slow.dead_letter(leased[0], "too late")
    assert env.raw.llen(env.queue) == 1
    assert slow.dead_letters() == []


def test_restarted_consumer_does_not_inherit_leases(env: Env) -> None:
    first = env.make("worker", lease_timeout=1.0)
    first.publish(message(1), env.queue)
    first.fetch([env.queue], 1, 0)
    second = env.make("worker", lease_timeout=1.0)  # same consumer_id, new process
    wait_lease_expired(env, first)
    second.heartbeat()
    [delivery] = second.fetch([env.queue], 1, 0)
    assert delivery.delivery_count == 2


# -- delayed -----------------------------------------------------------------------


def test_delayed_message_waits_for_eta(env: Env) -> None:
    broker = env.make()
    eta = time.time() + 1.0
    broker.publish(message(1), env.queue, eta=eta)
    assert env.raw.zcard(f"{env.prefix}delayed") == 1
    assert broker.fetch([env.queue], 10, 0) == []
    got = broker.fetch([env.queue], 10, 5.0)
    assert ids(got) == ["1"]
    assert time.time() >= eta - 0.01
    assert env.raw.zcard(f"{env.prefix}delayed") == 0


def test_past_eta_publishes_at_once(env: Env) -> None:
    broker = env.make()
    broker.publish(message(1), env.queue, eta=time.time() - 5)
    assert env.raw.llen(env.queue) == 1
    assert not env.raw.exists(f"{env.prefix}delayed")


def test_delayed_message_published_elsewhere_is_promoted(env: Env) -> None:
    consumer, producer = env.make("consumer"), env.make("producer")
    assert consumer.fetch([env.queue], 10, 0) == []  # consumer has seen an empty store
    producer.publish(message(1), env.queue, eta=time.time() + 0.3)
    assert ids(consumer.fetch([env.queue], 10, 5.0)) == ["1"]


@pytest.mark.timeout(60)
def test_concurrent_promotion_delivers_each_once(env: Env) -> None:
    producer = env.make("producer")
    eta = time.time() + 1.5
    for n in range(2000):
        producer.publish(message(n), env.queue, eta=eta)
    consumers = [env.make(f"consumer{i}") for i in range(3)]
    seen: list[str] = []
    lock = threading.Lock()

    def consume(broker: RedisBroker) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= 2000:
                    return
            batch = broker.fetch([env.queue], 150, 0.5)
            broker.ack(batch)
            with lock:
                seen.extend(ids(batch))

    threads = [threading.Thread(target=consume, args=(c,)) for c in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert len(seen) == 2000
    assert sorted(seen, key=int) == [str(n) for n in range(2000)]
    assert env.raw.zcard(f"{env.prefix}delayed") == 0
    assert consumers[0].fetch([env.queue], 10, 0.6) == []


# -- dead letters and malformed payloads -----------------------------------------------


def test_dead_letter_list_requeue_purge(env: Env) -> None:
    broker = env.make()
    for n in range(3):
        broker.publish(message(n), env.queue)
    for delivery in broker.fetch([env.queue], 3, 0):
        broker.dead_letter(delivery, f"failed {delivery.envelope.headers['id']}")
    assert leased(env.raw, broker) == 0

    parked = broker.dead_letters()
    assert [p.reason for p in parked] == ["failed 0", "failed 1", "failed 2"]
    assert [p.envelope.headers["id"] for p in parked] == ["0", "1", "2"]
    assert {p.queue for p in parked} == {env.queue}
    assert len(broker.dead_letters(limit=2)) == 2

    assert broker.requeue_dead_letters([parked[1].id, "no-such-id"]) == 1
    [again] = broker.fetch([env.queue], 10, 0)
    assert again.envelope.headers["id"] == "1" and again.delivery_count == 1
    assert [p.id for p in broker.dead_letters()] == [parked[0].id, parked[2].id]

    assert broker.requeue_dead_letters() == 2
    assert ids(broker.fetch([env.queue], 10, 0)) == ["0", "2"]
    assert broker.dead_letters() == []

    broker.dead_letter(again, "again")
    assert broker.purge_dead_letters() == 1
    assert broker.dead_letters() == []


def test_dead_letter_requeue_keeps_priority_list(env: Env) -> None:
    broker = env.make()
    broker.publish(message(1), env.queue, priority=9)
    [delivery] = broker.fetch([env.queue], 1, 0)
    broker.dead_letter(delivery, "x")
    broker.requeue_dead_letters()
    assert env.raw.llen(list_key(env.queue, 9)) == 1


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json \xff\xfe", "not JSON"),
        (b'{"hello": "world"}', "not a kombu envelope"),
        (
            b'{"body": "abc", "content-type": "x/y", "properties": {"body_encoding": "base64"}}',
            "base64",
        ),
    ],
)
def test_malformed_payload_is_delivered_and_dead_lettered(
    env: Env, payload: bytes, error: str
) -> None:
    broker = env.make()
    env.raw.lpush(env.queue, payload)
    [delivery] = broker.fetch([env.queue], 10, 0)
    assert delivery.envelope.content_type == MALFORMED_CONTENT_TYPE
    assert error in delivery.envelope.headers["x-taskq-error"]
    assert delivery.envelope.body == payload

    broker.dead_letter(delivery, delivery.envelope.headers["x-taskq-error"])
    [parked] = broker.dead_letters()
    assert error in parked.reason
    assert parked.envelope.body == payload
    assert broker.requeue_dead_letters() == 1
    assert env.raw.lrange(env.queue, 0, -1) == [payload]  # byte for byte


# -- connections -------------------------------------------------------------------


def test_recovers_after_connections_are_killed(env: Env) -> None:
    broker = env.make()
    broker.publish(message(1), env.queue)
    killed = connections(env.raw, broker)
    assert killed
    for client in killed:
        env.raw.client_kill_filter(_id=client["id"])
    broker.publish(message(2), env.queue)
    assert ids(broker.fetch([env.queue], 10, 1.0)) == ["1", "2"]


@pytest.mark.slow  # a redis-server of its own: the full tier
@pytest.mark.timeout(30)
def test_reloads_scripts_redis_forgot(tmp_path: Path) -> None:
    """After SCRIPT FLUSH (a restarted Redis forgets its scripts too) a fetch loads
    the script again, on either path: the plain call, and BLMOVE then the script
    in one round trip, whose message waits in the landing list for the reloaded
    script to adopt. A private server: SCRIPT FLUSH would hit every user."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    raw = server.client()
    # The BLMOVE blocks up to poll_interval: long enough to flush while it waits.
    broker = RedisBroker(server.url, consumer_id="c", options={"poll_interval": 5.0})
    try:
        broker.publish_many([(message(n), "q", None) for n in (1, 2)])
        first = broker.fetch(["q"], 1, 0)
        raw.script_flush()
        second = broker.fetch(["q"], 1, 0)
        assert ids(first + second) == ["1", "2"]
        broker.ack(first + second)

        got: list[list[Delivery]] = []
        consumer = threading.Thread(target=lambda: got.append(broker.fetch(["q"], 10, 10.0)))
        consumer.start()
        wait_until(lambda: any(c["cmd"] == "blmove" for c in connections(raw, broker)))
        raw.script_flush()
        raw.lpush("q", encode_payload(message(3), "q", 0))  # as a producer would
        consumer.join(10)
        assert ids(got[0]) == ["3"]
        broker_keys = keys(raw, broker)
        assert raw.hlen(broker_keys.inflight) == 1
        assert not raw.exists(f"{broker_keys.landing_prefix}q")
    finally:
        broker.close()
        raw.close()
        server.stop()


def test_wrong_type_queue_key_is_reported(env: Env) -> None:
    broker = env.make()
    env.raw.set(list_key(env.queue, 3), "not a list")
    with pytest.raises(BrokerError, match="other than a list"):
        broker.fetch([env.queue], 10, 0)
    broker.publish(message(1), env.queue)
    assert ids(broker.fetch([env.queue], 10, 0)) == ["1"]  # the good list still works


def test_wrong_type_watched_key_leases_nothing(env: Env) -> None:
    broker = env.make()
    env.raw.set(env.queue, "not a list")
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        broker.fetch([env.queue], 10, 0.2)
    assert leased(env.raw, broker) == 0


# -- kombu interop -----------------------------------------------------------------


def test_kombu_producer_to_taskq(env: Env) -> None:
    q = env.queue
    with Connection(env.url) as conn:
        producer = conn.Producer()
        exchange = Exchange(q, type="direct")
        for n, priority in ((1, 0), (2, 7)):
            producer.publish(
                {"n": n},
                exchange=exchange,
                routing_key=q,
                declare=[Queue(q, exchange, routing_key=q)],
                serializer="json",
                headers={"id": str(n), "task": "t.add"},
                correlation_id=f"c{n}",
                priority=priority,
            )
    broker = env.make()
    got = broker.fetch([q], 10, 1.0)
    assert ids(got) == ["1", "2"]
    first = got[0].envelope
    assert first.body == b'{"n": 1}'
    assert first.content_type == "application/json"
    assert first.content_encoding == "utf-8"
    assert first.headers == {"id": "1", "task": "t.add"}
    assert first.properties["correlation_id"] == "c1"
    assert got[1].envelope.properties["priority"] == 7


def test_declare_routes_celery_style_publishes(env: Env) -> None:
    q = env.queue
    env.make().declare([QueueSpec(q)])
    with Connection(env.url) as conn:
        # Like Celery: exchange and routing key named after the queue, no declare.
        conn.Producer().publish(
            {"n": 1}, exchange=q, routing_key=q, headers={"id": "1"}, declare=[]
        )
    assert ids(env.make().fetch([q], 10, 1.0)) == ["1"]


def test_taskq_producer_to_kombu_consumer(env: Env) -> None:
    q = env.queue
    broker = env.make()
    broker.publish(message(1, task="t.add"), q)
    broker.publish(message(2), q, priority=9)
    with Connection(env.url) as conn:
        simple = conn.SimpleQueue(q)
        try:
            received = []
            for _ in range(2):
                msg = simple.get(timeout=5)
                received.append(msg)
                msg.ack()
        finally:
            simple.close()
    first, second = received
    assert first.body == b'{"n": 1}'
    assert first.content_type == "application/json"
    assert first.headers == {"id": "1", "task": "t.add"}
    assert first.payload == {"n": 1}
    assert first.properties["correlation_id"] == "1"
    assert second.headers["id"] == "2" and second.properties["priority"] == 9
