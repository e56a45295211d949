"""Delayed delivery on RabbitMQ (``taskq.broker.amqp.delay``) against a real server.

The shared ``taskq.delayed.*`` topology is idempotent infrastructure and stays;
each test deletes its own destination queues (their bindings go with them) and
their exchanges. Tests that need to break the topology (unroutable messages, the
classic variant) build a private one under a unique prefix and delete it.
Waits poll ``fetch`` against deadlines; nothing sleeps and hopes.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import kombu
import pytest

from taskq import App
from taskq.broker.amqp import delay as amqp_delay
from taskq.broker.amqp.broker import KombuBroker
from taskq.broker.amqp.delay import LEVELS, MAX_DELAY, DelayTopology
from taskq.broker.base import Delivery, Envelope, QueueSpec
from taskq.errors import BrokerError, ConfigurationError
from taskq.testing import running_worker
from tests.waiting import wait_until

#: How late a delayed message may arrive: the rounding up to whole seconds has
#: nothing to add when the delay is whole, so this is hops, confirms and polling.
LATE = 1.5

# -- the encoding, without a server ----------------------------------------------------


def test_delay_rounds_up_to_whole_seconds_and_never_early() -> None:
    now = 1000.0
    assert amqp_delay.delay_seconds(now + 2, now) == 2
    assert amqp_delay.delay_seconds(now + 1.2, now) == 2
    assert amqp_delay.delay_seconds(now + 0.001, now) == 1
    assert amqp_delay.delay_seconds(now, now) == 0
    assert amqp_delay.delay_seconds(now - 5, now) == 0
    assert amqp_delay.delay_seconds(now + 10 * MAX_DELAY, now) == MAX_DELAY


def test_routing_key_is_the_delay_in_binary_then_the_queue() -> None:
    topology = DelayTopology()
    assert topology.routing_key(5, "q") == "0." * (LEVELS - 3) + "1.0.1.q"
    assert topology.routing_key(MAX_DELAY, "q") == "1." * LEVELS + "q"
    assert topology.binding_key("a.b") == "*." * LEVELS + "a%2Eb"
    with pytest.raises(ValueError):
        topology.routing_key(0, "q")


@pytest.mark.parametrize("name", ["plain", "a.b", "#", "*.x", "a%2Eb", "x.#.*%", "ünï.cødé"])
def test_queue_names_escape_to_one_word_without_wildcards(name: str) -> None:
    word = amqp_delay.escape(name)
    assert "." not in word and "*" not in word and "#" not in word
    assert amqp_delay.unescape(word) == name


def test_queue_names_too_long_for_a_routing_key_are_refused() -> None:
    with pytest.raises(BrokerError, match="too long for delayed delivery"):
        DelayTopology().routing_key(1, "q" * 200)


def test_destination_is_read_only_from_the_topology() -> None:
    topology = DelayTopology()
    key = topology.routing_key(3, "a.b")
    assert topology.destination("taskq.delivery", key) == "a.b"
    assert topology.destination("taskq.delayed.0", key) == "a.b"
    assert topology.destination("a.b", key) is None  # published straight to the queue
    assert topology.destination("taskq.delivery", "a.b") is None


def test_level_queues_chain_down_to_the_delivery_exchange() -> None:
    quorum, classic = DelayTopology("quorum"), DelayTopology("classic")
    assert quorum.queue_arguments(3) == {
        "x-queue-type": "quorum",
        "x-message-ttl": 8000,
        "x-dead-letter-exchange": "taskq.delayed.2",
        "x-overflow": "reject-publish",
        "x-dead-letter-strategy": "at-least-once",
    }
    assert quorum.queue_arguments(0)["x-dead-letter-exchange"] == "taskq.delivery"
    assert "x-dead-letter-strategy" not in classic.queue_arguments(0)


def test_the_option_chooses_the_queue_type_or_turns_it_off() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672//"
    assert amqp_delay.for_url(url) == DelayTopology("quorum")
    assert amqp_delay.for_url(url, "classic") == DelayTopology("classic")
    assert amqp_delay.for_url(url, False) is None
    assert amqp_delay.for_url("memory://") is None
    with pytest.raises(ConfigurationError, match="Known: quorum, classic"):
        amqp_delay.for_url(url, "stream")
    assert KombuBroker(url, consumer_id="c").supports_delayed
    assert not KombuBroker(
        url, consumer_id="c", options={"delayed_delivery": False}
    ).supports_delayed
    assert not KombuBroker("memory://", consumer_id="c").supports_delayed


# -- through KombuBroker on the shared topology ----------------------------------------


@dataclass
class Env:
    url: str
    unique: str
    queue: str
    make: Callable[..., KombuBroker]
    queues: list[str]


def delete_queues(url: str, names: list[str]) -> None:
    """Delete test queues (their bindings, to taskq.delivery too, go with them) and
    the direct exchanges named after them."""
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)
            channel.exchange_delete(name)


@pytest.fixture
def env(amqp_url: str, unique: str) -> Iterator[Env]:
    brokers: list[KombuBroker] = []
    queues: list[str] = []

    def make(name: str = "c", **options: Any) -> KombuBroker:
        broker = KombuBroker(amqp_url, consumer_id=f"{name}-{unique}", options=options)
        brokers.append(broker)
        return broker

    yield Env(amqp_url, unique, f"dq-{unique}", make, queues)
    for broker in brokers:
        broker.close()
    delete_queues(amqp_url, [f"dq-{unique}", *queues])


def message(n: int, **headers: Any) -> Envelope:
    return Envelope(b'{"n": %d}' % n, "application/json", headers={"id": str(n), **headers})


def collect(
    broker: KombuBroker, queues: list[str], count: int, timeout: float
) -> list[tuple[float, Delivery]]:
    """Fetch and ack until ``count`` deliveries arrived; each with its arrival time."""
    got: list[tuple[float, Delivery]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} messages arrived within {timeout}s"
        batch = broker.fetch(queues, 200, min(left, 0.2))
        now = time.time()
        got += [(now, d) for d in batch]
        broker.ack(batch)
    return got


def nothing_within(broker: KombuBroker, queues: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        batch = broker.fetch(queues, 10, min(left, 0.1))
        assert not batch, f"unexpected delivery: {[d.envelope.headers for d in batch]}"


def test_a_message_is_not_fetchable_before_its_eta(env: Env) -> None:
    broker = env.make()
    broker.declare([QueueSpec(env.queue)])
    eta = time.time() + 2
    broker.publish(message(1), env.queue, priority=3, eta=eta)
    nothing_within(broker, [env.queue], eta - 1 - time.time())  # still nothing at +1 s
    [(arrived, delivery)] = collect(broker, [env.queue], 1, timeout=5)
    assert eta <= arrived <= eta + LATE
    assert delivery.queue == env.queue  # not the delay key it travelled with
    assert delivery.delivery_count == 1
    assert delivery.envelope.headers == {"id": "1"}  # RabbitMQ's x-death hops removed
    assert delivery.envelope.properties["priority"] == 3


def test_several_delays_each_arrive_on_time(env: Env) -> None:
    broker = env.make()
    broker.declare([QueueSpec(env.queue)])
    start = time.time()
    etas = {str(d): start + d for d in (1, 3, 2, 5)}
    for n, eta in etas.items():
        broker.publish(message(int(n)), env.queue, eta=eta)
    got = collect(broker, [env.queue], 4, timeout=10)
    assert [d.envelope.headers["id"] for _, d in got] == ["1", "2", "3", "5"]
    for arrived, delivery in got:
        eta = etas[delivery.envelope.headers["id"]]
        assert eta <= arrived <= eta + LATE, (delivery.envelope.headers, arrived - eta)


def test_an_eta_in_the_past_is_delivered_at_once(env: Env) -> None:
    broker = env.make()
    broker.declare([QueueSpec(env.queue)])
    sent = time.time()
    broker.publish(message(1), env.queue, eta=sent - 30)
    [(arrived, delivery)] = collect(broker, [env.queue], 1, timeout=5)
    assert arrived - sent < 0.5
    assert delivery.queue == env.queue


def test_a_producer_binds_a_queue_no_worker_declared_yet(env: Env) -> None:
    producer, consumer = env.make("p"), env.make("c")
    eta = time.time() + 1
    producer.publish(message(1), env.queue, eta=eta)  # no declare() anywhere
    [(arrived, _)] = collect(consumer, [env.queue], 1, timeout=5)
    assert eta <= arrived <= eta + LATE


def test_dots_and_wildcards_in_queue_names_reach_only_their_queue(env: Env) -> None:
    # With Celery's ``#.<queue>`` binding, queue "b" would also get messages for "a.b",
    # and a queue named "s.*" every message for "s.<anything>".
    b, a_b = f"b-{env.unique}", f"a-{env.unique}.b-{env.unique}"
    star, s_x = f"s-{env.unique}.*", f"s-{env.unique}.x"
    names = [b, a_b, star, s_x]
    env.queues.extend(names)
    broker = env.make()
    broker.declare([QueueSpec(name) for name in names])
    eta = time.time() + 1
    broker.publish(message(1), a_b, eta=eta)
    broker.publish(message(2), s_x, eta=eta)
    got = collect(broker, names, 2, timeout=5)
    assert sorted((d.envelope.headers["id"], d.queue) for _, d in got) == [("1", a_b), ("2", s_x)]
    nothing_within(broker, names, 0.5)


def test_a_thousand_delayed_messages_arrive_exactly_once(env: Env) -> None:
    broker = env.make()
    broker.declare([QueueSpec(env.queue)])
    eta = time.time() + 2
    for n in range(1000):
        broker.publish(message(n), env.queue, eta=eta)
    got = collect(broker, [env.queue], 1000, timeout=20)
    nothing_within(broker, [env.queue], 1.0)  # and no duplicates behind them
    counts = collections.Counter(d.envelope.headers["id"] for _, d in got)
    assert len(counts) == 1000 and set(counts.values()) == {1}
    assert min(arrived for arrived, _ in got) >= eta


# -- end to end through the app and a worker -------------------------------------------


def waiting_in_delay_levels(url: str) -> int:
    """Messages in the delay levels a 2-3 s countdown uses (other tests may add some)."""
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        return sum(
            channel.queue_declare(f"taskq.delayed.{n}", passive=True).message_count
            for n in range(3)
        )


@pytest.fixture
def apps(amqp_url: str, redis_url: str, unique: str) -> Iterator[Callable[..., App]]:
    made: list[App] = []

    def make(**options: Any) -> App:
        app = App(
            "delayed",
            broker=amqp_url,
            backend=redis_url,
            task_default_queue=f"dq-{unique}",
            broker_transport_options=options,
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()
    delete_queues(amqp_url, [f"dq-{unique}"])


def register_stamp(app: App) -> Any:
    @app.task(name="delayed.stamp")
    def stamp() -> float:
        return time.time()

    return stamp


def test_countdown_waits_in_rabbitmq_not_in_the_worker(
    apps: Callable[..., App], amqp_url: str
) -> None:
    app = apps()
    stamp = register_stamp(app)
    with running_worker(app) as worker:
        sent = time.time()
        result = stamp.apply_async(countdown=2)
        seen_waiting = False
        while not result.ready():
            assert time.time() - sent < 10, "the task did not run within 10 s"
            assert not worker.holding.held  # nothing waits in the worker's memory
            seen_waiting = seen_waiting or waiting_in_delay_levels(amqp_url) > 0
            time.sleep(0.02)
        ran = result.get(timeout=1)
    assert seen_waiting
    assert sent + 2 <= ran <= sent + 2 + LATE
    result.forget()


@pytest.mark.parametrize("countdown", [0.3, 2.5])
def test_a_worker_moves_early_messages_into_the_delay_levels(
    apps: Callable[..., App], countdown: float
) -> None:
    # A producer without delayed delivery (Celery, or delayed_delivery=False) sends
    # ETA messages straight to the queue. The worker hands them to the delay levels
    # (publish, then ack) instead of holding them; one due in under a second goes
    # round once (1 s, rounded up) and then runs, so nothing loops.
    producer = apps(delayed_delivery=False)
    stamp = register_stamp(producer)
    worker_app = apps()
    register_stamp(worker_app)
    with running_worker(worker_app) as worker:
        sent = time.time()
        result = stamp.apply_async(countdown=countdown)
        while not result.ready():
            assert time.time() - sent < 10, "the task did not run within 10 s"
            assert not worker.holding.held
            time.sleep(0.02)
        ran = result.get(timeout=1)
    assert sent + countdown <= ran <= sent + max(countdown, 1.0) + LATE
    result.forget()


# -- a private topology: unroutable messages, the classic variant ----------------------


@pytest.fixture
def private(amqp_url: str, unique: str) -> Iterator[Callable[[str], tuple[DelayTopology, Any]]]:
    conn = kombu.Connection(amqp_url, transport_options={"confirm_publish": True})
    made: list[DelayTopology] = []

    def make(queue_type: str) -> tuple[DelayTopology, Any]:
        topology = DelayTopology(
            queue_type,
            prefix=f"taskq-test-{unique}.delayed",
            delivery_exchange=f"taskq-test-{unique}.delivery",
        )
        made.append(topology)
        channel = conn.channel()
        topology.declare(channel)
        return topology, channel

    yield make
    channel = conn.channel()
    for topology in made:
        for n in range(LEVELS):
            channel.queue_delete(topology.level(n))
            channel.exchange_delete(topology.level(n))
        channel.queue_delete(topology.unroutable)
        channel.exchange_delete(topology.unroutable)
        channel.exchange_delete(topology.delivery_exchange)
    delete_queues(amqp_url, [f"pq-{unique}"])
    conn.release()


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_unroutable_messages_are_parked_and_do_not_stall_the_level(
    private: Callable[[str], tuple[DelayTopology, Any]], unique: str, queue_type: str
) -> None:
    # Without the alternate exchange, at-least-once dead-lettering retries messages
    # whose queue is gone and, 32 of them, blocks every later message of the level.
    topology, channel = private(queue_type)
    producer = kombu.Producer(channel)
    for _ in range(50):
        key = topology.routing_key(1, f"gone-{unique}")
        producer.publish(b"lost", exchange=topology.entry_exchange, routing_key=key)
    queue = kombu.Queue(f"pq-{unique}", kombu.Exchange(f"pq-{unique}", "direct"), f"pq-{unique}")
    eta = time.time() + 1
    exchange, key = topology.route(channel, queue, eta, time.time()) or ("", "")
    producer.publish(b"real", exchange=exchange, routing_key=key)
    bound = queue(channel)
    got: list[Any] = []

    def arrived() -> bool:
        got.append(bound.get(no_ack=True))
        return got[-1] is not None

    wait_until(arrived, 5, "the due message")
    assert eta <= time.time() <= eta + LATE
    assert topology.destination(got[-1].delivery_info["exchange"], key) == queue.name

    def parked() -> int:
        return int(channel.queue_declare(topology.unroutable, passive=True).message_count)

    wait_until(lambda: parked() == 50, 5, "50 messages parked as unroutable")


def test_mismatched_queue_types_name_the_fix(
    private: Callable[[str], tuple[DelayTopology, Any]],
) -> None:
    topology, channel = private("classic")
    quorum = DelayTopology("quorum", topology.prefix, topology.delivery_exchange)
    with pytest.raises(BrokerError, match="same delayed_delivery broker option"):
        quorum.declare(channel)
