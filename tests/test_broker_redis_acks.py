"""RedisBroker.ack_soon: acks held for the next fetch, and never for long.

Real Redis; every test uses its own key prefix and queue and deletes its keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from taskq.broker.base import Envelope
from taskq.broker.redis import RedisBroker, scripts
from taskq.errors import BrokerError, ConfigurationError
from tests.faults.proxy import Action, RedisProxy, names, script_call
from tests.leases import keys, leased
from tests.waiting import wait_until


def fill(broker: RedisBroker, queue: str, count: int) -> None:
    envelope = Envelope(b"{}", "application/json", headers={"id": "x"})
    broker.publish_many([(envelope, queue, None)] * count)


def leased_tags(raw: redis.Redis, broker: RedisBroker) -> list[str]:
    return sorted(t.decode() for t in raw.hkeys(keys(raw, broker).inflight))


def test_held_acks_go_with_the_next_fetch(
    proxy: RedisProxy, make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(url=proxy.url, ack_delay=30)  # the flusher never fires in the test
    queue = f"q-{unique}"
    fill(broker, queue, 8)
    first = broker.fetch([queue], 4, 0)
    broker.ack_soon(first)
    assert leased(raw, broker) == 4  # held, not sent
    with proxy.recording() as sent:
        second = broker.fetch([queue], 4, 0)
    assert names(sent) == ["EVALSHA"]  # the fetch script: no round trip of their own
    assert leased_tags(raw, broker) == sorted(d.tag for d in second)


def test_held_acks_are_sent_within_ack_delay(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=0.1)
    queue = f"q-{unique}"
    fill(broker, queue, 3)
    broker.ack_soon(broker.fetch([queue], 3, 0))
    held_at = time.monotonic()
    wait_until(lambda: leased(raw, broker) == 0, timeout=5)
    assert time.monotonic() - held_at < 2.0


@pytest.mark.parametrize("how", ["close", "heartbeat", "requeue"])
def test_held_acks_are_sent_first_by(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str, how: str
) -> None:
    broker = make_broker(ack_delay=30)
    queue = f"q-{unique}"
    fill(broker, queue, 4)
    done, unstarted = broker.fetch([queue], 2, 0), broker.fetch([queue], 2, 0)
    inflight = keys(raw, broker).inflight
    broker.ack_soon(done)
    if how == "close":
        broker.close()
        assert raw.hlen(inflight) == 2
    elif how == "heartbeat":
        broker.heartbeat()
        assert raw.hlen(inflight) == 2
    else:
        broker.requeue(unstarted)
        assert raw.hlen(inflight) == 0
        assert raw.llen(queue) == 2


def test_ack_delay_zero_acks_at_once(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=0)
    queue = f"q-{unique}"
    fill(broker, queue, 2)
    broker.ack_soon(broker.fetch([queue], 2, 0))
    assert leased(raw, broker) == 0


@pytest.mark.parametrize("fault", ["lose command", "lose reply"])
def test_acks_of_a_failed_fetch_are_sent_again(
    proxy: RedisProxy,
    make_broker: Callable[..., RedisBroker],
    raw: redis.Redis,
    unique: str,
    fault: Action,
) -> None:
    """Held acks ride on a fetch. When the fetch fails, whether Redis ran it or not,
    they are held again and go with the next fetch, which hands over what the
    failed one leased (if it ran) rather than leasing more."""
    broker = make_broker(url=proxy.url, ack_delay=30)
    queue = f"q-{unique}"
    fill(broker, queue, 4)
    broker.ack_soon(broker.fetch([queue], 2, 0))
    # The call and the broker's one re-send of it both fail.
    failure = proxy.fault(fault, script_call(scripts.FETCH), times=2)
    with pytest.raises(BrokerError, match="unreachable"):
        broker.fetch([queue], 2, 0)
    failure.wait()
    # Lost on the way: the acks never reached Redis. Lost reply: two more leased.
    assert leased(raw, broker) == 2
    with proxy.recording() as sent:
        again = broker.fetch([queue], 2, 0)
    assert names(sent) == ["EVALSHA"]  # the acks went with it
    assert len(again) == 2 and raw.llen(queue) == 0
    assert leased_tags(raw, broker) == sorted(d.tag for d in again)


def test_many_held_acks_are_sent_at_once(
    make_broker: Callable[..., RedisBroker], raw: redis.Redis, unique: str
) -> None:
    broker = make_broker(ack_delay=30)
    queue = f"q-{unique}"
    fill(broker, queue, 1000)
    deliveries = []
    while batch := broker.fetch([queue], 500, 0):
        deliveries += batch
    broker.ack_soon(deliveries)  # 1,000: the limit
    assert leased(raw, broker) == 0


def test_ack_delay_must_not_be_negative(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="ack_delay"):
        RedisBroker(redis_url, consumer_id="c", options={"ack_delay": -1})
